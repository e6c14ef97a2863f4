// Reads the YAML config file and merges command-line overrides on top of it.

import { readFileSync } from 'node:fs';
import YAML from 'yaml';
import { HalfcloseError } from '../errors.js';
import { resolveConfig, validateFile, type FileConfig, type ProxyConfig } from './schema.js';

export function readConfigFile(path: string): FileConfig {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? 'unknown error';
    throw new HalfcloseError('HC_ERR_CONFIG_FILE', `--config: cannot read ${path}: ${code}`, { cause: err });
  }
  let data: unknown;
  try {
    data = YAML.parse(text, { prettyErrors: true, uniqueKeys: true });
  } catch (err) {
    const first = String((err as Error).message).split('\n')[0]!.replace(/:$/, ''); // yaml ends it with ':' before a code frame
    throw new HalfcloseError('HC_ERR_CONFIG_FILE', `${path}: not valid YAML: ${first}`, { cause: err });
  }
  if (data !== null && data !== undefined && (typeof data !== 'object' || Array.isArray(data))) {
    throw new HalfcloseError('HC_ERR_CONFIG_FILE', `${path}: expected a mapping of keys (listeners, timeouts, keepalive, …) at the top level`);
  }
  return validateFile(data, path);
}

/**
 * File values first, flags over them. Listener flags (--outbound, --inbound, --route), when any
 * are given, replace the file's listeners rather than adding to them.
 */
export function mergeConfig(file: FileConfig, flags: FileConfig): FileConfig {
  return {
    ...file,
    ...(flags.listeners && flags.listeners.length > 0 ? { listeners: flags.listeners } : {}),
    timeouts: { ...file.timeouts, ...flags.timeouts },
    keepalive: { ...file.keepalive, ...flags.keepalive },
    admin: { ...file.admin, ...flags.admin },
    ...(flags.bufferLimit !== undefined ? { bufferLimit: flags.bufferLimit } : {}),
    ...(flags.accessLog !== undefined ? { accessLog: flags.accessLog } : {}),
    ...(flags.relay !== undefined ? { relay: flags.relay } : {}),
    ...(flags.logLevel !== undefined ? { logLevel: flags.logLevel } : {}),
  };
}

export function loadConfig(path: string | undefined, flags: FileConfig): ProxyConfig {
  const file = path ? readConfigFile(path) : {};
  return resolveConfig(mergeConfig(file, flags), path ?? 'flags');
}
