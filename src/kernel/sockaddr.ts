// struct sockaddr_in / sockaddr_in6 for the libc calls of the splice relay (bind, connect, accept4,
// getsockname), and a six-number form of an address that crosses between threads in a message:
// [family (4|6), port, w0, w1, w2, w3] — for IPv4 w0 is the address, for IPv6 w0..w3 its four
// 32-bit words, most significant first.

import net from 'node:net';
import { AF_INET, AF_INET6 } from './libc.js';
import type { Endpoint } from '../util/address.js';
import { formatIPv6, ipv6Bytes } from './inet.js';

export const SOCKADDR_IN_SIZE = 16;
export const SOCKADDR_IN6_SIZE = 28;
/** Room for either. */
export const SOCKADDR_MAX = 28;
/** Numbers per address in a message. */
export const ADDR_FIELDS = 6;

/** The sockaddr for a literal IPv4 or IPv6 address and a port. */
export function sockaddrOf(e: { host: string; port: number }): Buffer {
  if (net.isIPv4(e.host)) {
    const b = Buffer.alloc(SOCKADDR_IN_SIZE);
    b.writeUInt16LE(AF_INET, 0);
    b.writeUInt16BE(e.port, 2);
    e.host.split('.').forEach((p, i) => (b[4 + i] = Number(p)));
    return b;
  }
  if (!net.isIPv6(e.host)) throw new Error(`not an IP address: ${e.host}`);
  const b = Buffer.alloc(SOCKADDR_IN6_SIZE);
  b.writeUInt16LE(AF_INET6, 0);
  b.writeUInt16BE(e.port, 2);
  b.set(ipv6Bytes(e.host), 8);
  return b;
}

/** Appends the six-number form of the sockaddr at `buf` to `out`; family 0 when it is neither. */
export function pushAddr(out: number[], buf: Buffer): void {
  writeAddr(out, out.length, buf);
}

/** Writes the six-number form of the sockaddr at `buf` into `out` at `at`; family 0 when it is neither. */
export function writeAddr(out: { [i: number]: number }, at: number, buf: Buffer): void {
  // In index order, so a plain array being appended to stays packed.
  const family = buf.readUInt16LE(0);
  if (family !== AF_INET && family !== AF_INET6) {
    for (let k = 0; k < 6; k++) out[at + k] = 0;
    return;
  }
  out[at] = family === AF_INET ? 4 : 6;
  out[at + 1] = buf.readUInt16BE(2);
  if (family === AF_INET6) {
    for (let w = 0; w < 4; w++) out[at + 2 + w] = buf.readUInt32BE(8 + 4 * w);
  } else {
    out[at + 2] = buf.readUInt32BE(4);
    out[at + 3] = 0;
    out[at + 4] = 0;
    out[at + 5] = 0;
  }
}

/** `::ffff:a.b.c.d` in the six-number form. */
export function isMappedV4(a: ArrayLike<number>, i: number): boolean {
  return a[i] === 6 && a[i + 2] === 0 && a[i + 3] === 0 && a[i + 4] === 0xffff;
}

/**
 * The endpoint of the six-number form at `a[i]`. IPv4-mapped IPv6 addresses come out as plain IPv4
 * with family 6 (what Node reports for a dual-stack listener's IPv4 client, unmapped); null for
 * family 0.
 */
export function endpointAt(a: ArrayLike<number>, i: number): Endpoint | null {
  const family = a[i];
  const port = a[i + 1]!;
  if (family === 4) return { host: v4Text(a[i + 2]!), port, family: 4 };
  if (family !== 6) return null;
  if (isMappedV4(a, i)) return { host: v4Text(a[i + 5]!), port, family: 6 };
  const bytes: number[] = [];
  for (let w = 2; w < 6; w++) bytes.push(a[i + w]! >>> 24, (a[i + w]! >>> 16) & 0xff, (a[i + w]! >>> 8) & 0xff, a[i + w]! & 0xff);
  return { host: formatIPv6(bytes), port, family: 6 };
}

// A proxy sees the same few addresses over and over (its clients, its own, its upstreams): their
// text is kept, up to V4_CACHE_MAX of them, instead of made twice per connection.
const V4_CACHE_MAX = 1024;
const v4Cache = new Map<number, string>();

function v4Text(n: number): string {
  let t = v4Cache.get(n);
  if (t === undefined) {
    if (v4Cache.size >= V4_CACHE_MAX) v4Cache.clear();
    t = `${n >>> 24}.${(n >>> 16) & 0xff}.${(n >>> 8) & 0xff}.${n & 0xff}`;
    v4Cache.set(n, t);
  }
  return t;
}
