// Endpoints: `HOST:PORT`, IPv6 as `[ADDR]:PORT`. Distinct names for each side, as the
// relay talks about a client, an upstream and an original destination, never just "an address".

import net from 'node:net';
import { HalfcloseError } from '../errors.js';

export interface Endpoint {
  readonly host: string;
  readonly port: number;
  /** 4 or 6 when host is a literal address, 0 for a name. */
  readonly family: 0 | 4 | 6;
}

export type ClientAddr = Endpoint;
export type UpstreamAddr = Endpoint;
export type OriginalDst = Endpoint;

/** Parses `HOST:PORT` or `[V6]:PORT`. `what` names the flag or key in the error. */
export function parseEndpoint(text: string, what: string, opts: { allowPortZero?: boolean } = {}): Endpoint {
  const s = text.trim();
  let host: string;
  let portText: string;
  const v6 = /^\[([^\]]+)\]:(\d+)$/.exec(s);
  if (v6) {
    host = v6[1]!;
    portText = v6[2]!;
    if (net.isIPv6(host) === false) {
      throw new HalfcloseError('HC_ERR_ADDRESS', `${what}: "${text}" has brackets but no IPv6 address inside`);
    }
  } else {
    const i = s.lastIndexOf(':');
    if (i <= 0 || s.indexOf(':') !== i) {
      throw new HalfcloseError('HC_ERR_ADDRESS', `${what}: expected HOST:PORT (IPv6 as [ADDR]:PORT), got "${text}"`);
    }
    host = s.slice(0, i);
    portText = s.slice(i + 1);
  }
  if (!/^\d+$/.test(portText)) {
    throw new HalfcloseError('HC_ERR_ADDRESS', `${what}: expected HOST:PORT with a numeric port, got "${text}"`);
  }
  const port = Number(portText);
  const min = opts.allowPortZero ? 0 : 1;
  if (port < min || port > 65535) {
    throw new HalfcloseError('HC_ERR_ADDRESS', `${what}: port ${port} is out of range ${min}-65535 in "${text}"`);
  }
  const family = net.isIPv4(host) ? 4 : net.isIPv6(host) ? 6 : 0;
  if (family === 0 && !/^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$/.test(host)) {
    throw new HalfcloseError('HC_ERR_ADDRESS', `${what}: "${host}" is neither an IP address nor a host name`);
  }
  return { host, port, family };
}

export function formatEndpoint(e: { host: string; port: number }): string {
  return net.isIPv6(e.host) ? `[${e.host}]:${e.port}` : `${e.host}:${e.port}`;
}

/** `::ffff:10.0.0.1` -> `10.0.0.1`, so IPv4 clients of a dual-stack listener compare equal. */
export function unmapIPv4(host: string): string {
  return host.startsWith('::ffff:') && net.isIPv4(host.slice(7)) ? host.slice(7) : host;
}
