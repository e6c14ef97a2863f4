// Entry point of `halfclose`: dispatches to a subcommand and turns our errors into one line on
// stderr with exit status 2. Anything that is not a HalfcloseError is a bug and keeps its stack.

import { isHalfcloseError } from '../errors.js';

type Command = { run(argv: string[]): Promise<number>; summary: string };

const COMMANDS: Record<string, () => Promise<Command>> = {
  proxy: () => import('./proxy.js'),
  iptables: () => import('./iptables.js'),
  scan: () => import('./scan.js'),
  lab: () => import('./lab.js'),
  doctor: () => import('./doctor.js'),
};

const USAGE = `halfclose — a transparent TCP sidecar proxy that never leaks half-closed connections

Usage: halfclose <command> [flags]

Commands:
%COMMANDS%

Run \`halfclose <command> --help\` for a command's flags.
`;

async function usage(): Promise<string> {
  const lines: string[] = [];
  for (const [name, load] of Object.entries(COMMANDS)) lines.push(`  ${name.padEnd(10)} ${(await load()).summary}`);
  return USAGE.replace('%COMMANDS%', lines.join('\n'));
}

export async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined || name === '--help' || name === '-h' || name === 'help') {
    process.stdout.write(await usage());
    return name === undefined ? 2 : 0;
  }
  if (name === '--version') {
    process.stdout.write('halfclose 0.1.0\n');
    return 0;
  }
  const load = COMMANDS[name];
  if (!load) {
    process.stderr.write(`halfclose: unknown command "${name}"; expected one of: ${Object.keys(COMMANDS).join(', ')}\n`);
    return 2;
  }
  return (await load()).run(rest);
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    if (isHalfcloseError(err)) {
      process.stderr.write(`halfclose: ${err.message}\n`);
      process.exitCode = 2;
    } else {
      process.stderr.write(`halfclose: internal error (please report): ${(err as Error)?.stack ?? String(err)}\n`);
      process.exitCode = 70;
    }
  },
);
