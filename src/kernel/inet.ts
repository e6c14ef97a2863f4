// Address text as the kernel tools print it, made comparable: `ss` prints `[::1]`, `::ffff:10.0.0.1`
// and `%eth0` scopes, /proc/net/nf_conntrack prints IPv6 fully expanded. One canonical form for both.

import net from 'node:net';

/** An address and port as printed by `ss` (`*` host or port = wildcard, port 0). */
export interface HostPort {
  /** Canonical host: IPv4 dotted, IPv6 compressed lower case (no brackets), or `*`. */
  host: string;
  /** Port number; 0 for `*`. */
  port: number;
  /** Interface scope (`%eth0`) when one was printed. */
  scope?: string;
}

const MAPPED = /^::ffff:(\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3})$/i;

/**
 * Canonical form of an IP address, or null when the text is not one. IPv4-mapped IPv6 stays
 * mapped (`::ffff:10.0.0.1`) so the family is not lost; compare with `hostKey` to ignore it.
 */
export function canonicalHost(text: string): string | null {
  let h = text.trim();
  if (h.startsWith('[') && h.endsWith(']')) h = h.slice(1, -1);
  if (h === '*') return '*';
  if (net.isIPv4(h)) return h;
  if (!net.isIPv6(h)) return null;
  const mapped = MAPPED.exec(h);
  if (mapped && net.isIPv4(mapped[1]!)) return `::ffff:${mapped[1]}`;
  try {
    // The WHATWG URL parser compresses IPv6 the standard way (RFC 5952), which is what ss prints.
    const c = new URL(`http://[${h}]/`).hostname.slice(1, -1);
    // A mapped address written in hex (`::ffff:a00:1`) comes back to dotted form.
    const hex = /^::ffff:([0-9a-f]{1,4}):([0-9a-f]{1,4})$/.exec(c);
    if (hex) {
      const a = parseInt(hex[1]!, 16);
      const b = parseInt(hex[2]!, 16);
      return `::ffff:${a >> 8}.${a & 255}.${b >> 8}.${b & 255}`;
    }
    return c;
  } catch {
    return null;
  }
}

/** Comparison key of a canonical host: `::ffff:10.0.0.1` and `10.0.0.1` are the same peer. */
export function hostKey(host: string): string {
  const m = MAPPED.exec(host);
  return m ? m[1]! : host;
}

/** `host:port` key for matching a socket to a conntrack tuple. */
export function endpointKey(host: string, port: number): string {
  return `${hostKey(host)}|${port}`;
}

/** Printable `host:port`, IPv6 bracketed. */
export function showHostPort(e: { host: string; port: number }): string {
  const port = e.port === 0 ? '*' : String(e.port);
  return e.host.includes(':') ? `[${e.host}]:${port}` : `${e.host}:${port}`;
}

/** 4 or 6 for a canonical host (mapped IPv4 counts as 4), 0 for `*`. */
export function hostFamily(host: string): 0 | 4 | 6 {
  if (host === '*') return 0;
  return net.isIPv4(hostKey(host)) ? 4 : 6;
}

/** The 16 bytes of an IPv6 address in text (`::` and an embedded dotted quad expanded). */
export function ipv6Bytes(addr: string): number[] {
  let a = addr;
  const dotted = /(\d+\.\d+\.\d+\.\d+)$/.exec(a);
  if (dotted) {
    const b = dotted[1]!.split('.').map(Number);
    a = a.slice(0, -dotted[1]!.length) + `${((b[0]! << 8) | b[1]!).toString(16)}:${((b[2]! << 8) | b[3]!).toString(16)}`;
  }
  const [head, tail] = a.includes('::') ? a.split('::') : [a, undefined];
  const h = head ? head.split(':') : [];
  const t = tail ? tail.split(':') : [];
  const groups = tail === undefined ? h : [...h, ...Array<string>(8 - h.length - t.length).fill('0'), ...t];
  return groups.flatMap((g) => {
    const n = parseInt(g, 16);
    return [n >> 8, n & 0xff];
  });
}

/**
 * RFC 5952 text of 16 bytes (lowercase, longest run of two or more zero groups compressed), as
 * glibc's and libuv's inet_ntop print it (IPv4-mapped and -compatible addresses dotted).
 */
export function formatIPv6(bytes: number[]): string {
  const groups: number[] = [];
  for (let i = 0; i < 16; i += 2) groups.push((bytes[i]! << 8) | bytes[i + 1]!);
  let bestStart = -1;
  let bestLen = 0;
  for (let i = 0; i < 8; ) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLen) {
      bestStart = i;
      bestLen = j - i;
    }
    i = j;
  }
  const hex = groups.map((g) => g.toString(16));
  // glibc prints IPv4-compatible (::a.b.c.d) and IPv4-mapped (::ffff:a.b.c.d) addresses dotted.
  if (bestStart === 0 && (bestLen === 6 || (bestLen === 5 && groups[5] === 0xffff))) {
    return `::${bestLen === 5 ? 'ffff:' : ''}${bytes.slice(12).join('.')}`;
  }
  if (bestLen < 2) return hex.join(':');
  return `${hex.slice(0, bestStart).join(':')}::${hex.slice(bestStart + bestLen).join(':')}`;
}
