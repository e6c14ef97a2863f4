// Socket options Node does not expose, through koffi on the socket's file descriptor:
// TCP keepalive idle/interval/count, TCP_USER_TIMEOUT, and SO_ORIGINAL_DST for redirected
// connections (IPv4 through SOL_IP, IPv6 through SOL_IPV6 / IP6T_SO_ORIGINAL_DST).

import net from 'node:net';
import os from 'node:os';
import { errno, libcCalls, words } from './libc.js';
import { HalfcloseError, SockoptError } from '../errors.js';
import type { OriginalDst } from '../util/address.js';

// Linux values from <sys/socket.h>, <netinet/in.h>, <netinet/tcp.h>, <linux/netfilter_ipv4.h>.
export const SOL_SOCKET = 1;
export const SOL_IP = 0;
export const SOL_IPV6 = 41;
export const IPPROTO_TCP = 6;
export const SO_KEEPALIVE = 9;
export const SO_LINGER = 13;
export const TCP_NODELAY = 1;
export const TCP_KEEPIDLE = 4;
export const TCP_KEEPINTVL = 5;
export const TCP_KEEPCNT = 6;
export const TCP_USER_TIMEOUT = 18;
export const SO_ORIGINAL_DST = 80;
export const IP6T_SO_ORIGINAL_DST = 80;
const AF_INET = 2;
const AF_INET6 = 10;

// One binding of libc per thread, shared with the splice relay's calls (libc.ts).
const sys = libcCalls;

// Scratch memory for the calls below. They are synchronous and JavaScript runs one at a time, so
// one buffer each serves every call; koffi passes a Buffer as a plain pointer, with no marshalling
// of an in/out array (about 0.5 µs a call instead of 1.25, and a proxied connection makes several).
// Each is read and written through a typed view of its memory (libc.ts, words()).
const [intVal, intWord] = words(new Int32Array(1));
const [optLen, lenWord] = words(new Uint32Array(1));
function len(n: number): Buffer {
  lenWord[0] = n;
  return optLen;
}

export function errnoName(errno: number): string {
  for (const [name, value] of Object.entries(os.constants.errno)) if (value === errno) return name;
  return `errno ${errno}`;
}

/** The kernel file descriptor behind a connected or accepted net.Socket. */
export function socketFd(socket: net.Socket): number {
  const fd = (socket as unknown as { _handle?: { fd?: number } })._handle?.fd;
  if (typeof fd !== 'number' || fd < 0) {
    throw new SockoptError('fd', 0, 'socket has no file descriptor (not connected, or already closed)');
  }
  return fd;
}

export function setIntOption(fd: number, level: number, name: number, value: number, label: string): void {
  intWord[0] = value;
  if (sys().setsockopt(fd, level, name, intVal, 4) !== 0) {
    const code = errno();
    throw new SockoptError(label, code, `setsockopt ${label}=${value} failed: ${errnoName(code)}`);
  }
}

export function getIntOption(fd: number, level: number, name: number, label: string): number {
  if (sys().getsockopt(fd, level, name, intVal, len(4)) !== 0) {
    const code = errno();
    throw new SockoptError(label, code, `getsockopt ${label} failed: ${errnoName(code)}`);
  }
  return intWord[0]!;
}

export interface KeepaliveSettings {
  /** Seconds of idleness before the first probe (TCP_KEEPIDLE). */
  idleSec: number;
  /** Seconds between unanswered probes (TCP_KEEPINTVL). */
  intervalSec: number;
  /** Unanswered probes before the kernel declares the connection dead (TCP_KEEPCNT). */
  count: number;
}

/** Turns keepalive on with exact idle, interval and count; Node's setKeepAlive can set only the idle time. */
export function setKeepalive(fd: number, k: KeepaliveSettings): void {
  setIntOption(fd, IPPROTO_TCP, TCP_KEEPIDLE, k.idleSec, 'TCP_KEEPIDLE');
  setIntOption(fd, IPPROTO_TCP, TCP_KEEPINTVL, k.intervalSec, 'TCP_KEEPINTVL');
  setIntOption(fd, IPPROTO_TCP, TCP_KEEPCNT, k.count, 'TCP_KEEPCNT');
  setIntOption(fd, SOL_SOCKET, SO_KEEPALIVE, 1, 'SO_KEEPALIVE');
}

export function disableKeepalive(fd: number): void {
  setIntOption(fd, SOL_SOCKET, SO_KEEPALIVE, 0, 'SO_KEEPALIVE');
}

/** Reads back what the kernel holds: enabled flag and the three values. */
export function getKeepalive(fd: number): KeepaliveSettings & { enabled: boolean } {
  return {
    enabled: getIntOption(fd, SOL_SOCKET, SO_KEEPALIVE, 'SO_KEEPALIVE') !== 0,
    idleSec: getIntOption(fd, IPPROTO_TCP, TCP_KEEPIDLE, 'TCP_KEEPIDLE'),
    intervalSec: getIntOption(fd, IPPROTO_TCP, TCP_KEEPINTVL, 'TCP_KEEPINTVL'),
    count: getIntOption(fd, IPPROTO_TCP, TCP_KEEPCNT, 'TCP_KEEPCNT'),
  };
}

/** TCP_USER_TIMEOUT in milliseconds: unacknowledged data older than this kills the connection. 0 = kernel default. */
export function setUserTimeout(fd: number, ms: number): void {
  setIntOption(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, ms, 'TCP_USER_TIMEOUT');
}

export function getUserTimeout(fd: number): number {
  return getIntOption(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, 'TCP_USER_TIMEOUT');
}

/**
 * The destination an iptables REDIRECT rewrote, read from conntrack through SO_ORIGINAL_DST.
 * `family` is the accepted socket's family (a dual-stack listener gives v4-mapped clients family 6
 * but their original destination is IPv4, so we try SOL_IP first for mapped addresses).
 */
export function originalDst(fd: number, localAddress: string): OriginalDst {
  const mapped = localAddress.startsWith('::ffff:');
  const v6 = net.isIPv6(localAddress) && !mapped;
  const buf = Buffer.alloc(v6 ? 28 : 16);
  const rc = v6
    ? sys().getsockopt(fd, SOL_IPV6, IP6T_SO_ORIGINAL_DST, buf, len(buf.length))
    : sys().getsockopt(fd, SOL_IP, SO_ORIGINAL_DST, buf, len(buf.length));
  if (rc !== 0) {
    throw new HalfcloseError('HC_ERR_ORIGINAL_DST', `getsockopt SO_ORIGINAL_DST failed: ${errnoName(errno())} (was the connection redirected by iptables?)`);
  }
  const family = buf.readUInt16LE(0);
  const port = buf.readUInt16BE(2);
  if (family === AF_INET) {
    const host = `${buf[4]}.${buf[5]}.${buf[6]}.${buf[7]}`;
    return { host, port, family: 4 };
  }
  if (family === AF_INET6) {
    const parts: string[] = [];
    for (let i = 8; i < 24; i += 2) parts.push(buf.readUInt16BE(i).toString(16));
    // Let the URL parser produce the canonical compressed form.
    const host = new URL(`http://[${parts.join(':')}]/`).hostname.slice(1, -1);
    return { host, port, family: 6 };
  }
  throw new HalfcloseError('HC_ERR_ORIGINAL_DST', `SO_ORIGINAL_DST returned unknown address family ${family}`);
}

export const SO_ERROR = 4;
export const TCP_INFO = 11;
/** tcpi_state values from <netinet/tcp.h> (the kernel's TCP_* states). */
export const TCP_STATE_CLOSE = 7;

/**
 * The kernel's TCP state of the socket (byte 0 of struct tcp_info). The guard polls it on sockets
 * whose read side has hit EOF: libuv stops polling those, so an RST or a keepalive timeout on them
 * would otherwise go unnoticed until the next write.
 */
export function getTcpState(fd: number): number {
  const buf = Buffer.alloc(8);
  if (sys().getsockopt(fd, IPPROTO_TCP, TCP_INFO, buf, len(buf.length)) !== 0) {
    const code = errno();
    throw new SockoptError('TCP_INFO', code, `getsockopt TCP_INFO failed: ${errnoName(code)}`);
  }
  return buf[0]!;
}

/**
 * Reads and clears the socket's pending error (SO_ERROR) as an errno, 0 when there is none; when
 * the getsockopt itself fails (a descriptor that is no socket any more), its errno. Never throws:
 * for the splice relay's worker, which acts on the number.
 */
export function takeSocketErrno(fd: number): number {
  if (sys().getsockopt(fd, SOL_SOCKET, SO_ERROR, intVal, len(4)) !== 0) return errno();
  return intWord[0]!;
}

/** Reads and clears the socket's pending error (SO_ERROR) as a code such as `ECONNRESET`, or null when there is none. */
export function takeSocketError(fd: number): string | null {
  const errno = getIntOption(fd, SOL_SOCKET, SO_ERROR, 'SO_ERROR');
  return errno === 0 ? null : errnoName(errno);
}

/** struct linger { l_onoff = 1, l_linger = 0 }: close() then sends an RST. */
const lingerReset = Buffer.from([1, 0, 0, 0, 0, 0, 0, 0]);

/** Closes a socket with an RST instead of a FIN (SO_LINGER 0), as Node's resetAndDestroy does. */
export function closeWithReset(fd: number): void {
  sys().setsockopt(fd, SOL_SOCKET, SO_LINGER, lingerReset, 8);
  sys().close(fd);
}
