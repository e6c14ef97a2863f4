// Flag parsing for every subcommand, on node:util's parseArgs in strict mode, with its errors
// turned into one readable line (exit status 2) instead of a stack trace.

import { parseArgs, type ParseArgsConfig } from 'node:util';
import { UsageError } from '../errors.js';

export type FlagSpec = NonNullable<ParseArgsConfig['options']>;

export interface Parsed {
  values: Record<string, string | boolean | (string | boolean)[] | undefined>;
  positionals: string[];
}

/** Parses argv against `options`; unknown flags, missing values and stray arguments become a UsageError. */
export function parseFlags(command: string, argv: string[], options: FlagSpec, allowPositionals = false): Parsed {
  try {
    const r = parseArgs({ args: argv, options, strict: true, allowPositionals, allowNegative: false } as ParseArgsConfig);
    return { values: r.values as Parsed['values'], positionals: r.positionals };
  } catch (err) {
    const e = err as Error & { code?: string };
    const msg = e.message.split('\n')[0]!.replace(/\. To specify a positional argument.*$/, '');
    if (e.code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION') {
      const flag = /'([^']+)'/.exec(msg)?.[1] ?? msg;
      throw new UsageError(`${command}: unknown flag ${flag} (see \`halfclose ${command} --help\`)`);
    }
    if (e.code === 'ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL') {
      const arg = /'([^']+)'/.exec(msg)?.[1] ?? msg;
      throw new UsageError(`${command}: unexpected argument "${arg}" (see \`halfclose ${command} --help\`)`);
    }
    if (e.code === 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE') {
      throw new UsageError(`${command}: ${msg.replace(/^Option /, '')}`);
    }
    throw new UsageError(`${command}: ${msg}`);
  }
}

export function str(v: Parsed['values'][string]): string | undefined {
  return typeof v === 'string' ? v : undefined;
}

export function list(v: Parsed['values'][string]): string[] {
  return Array.isArray(v) ? v.map(String) : typeof v === 'string' ? [v] : [];
}
