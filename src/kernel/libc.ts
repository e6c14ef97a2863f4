// The libc calls halfclose makes through koffi: the socket options (sockopt.ts) and the splice relay
// (its listening sockets, accept, connect, splice). Loaded on first use, once per thread (the
// relay's worker thread loads its own copy). Every call returns the raw result; the caller reads
// koffi.errno() when it is -1.

import koffi from 'koffi';

export interface Libc {
  epoll_create1(flags: number): number;
  /** `event`: a struct epoll_event (EPOLL_EVENT_SIZE bytes: u32 events, then u64 data at EPOLL_DATA_OFFSET). */
  epoll_ctl(epfd: number, op: number, fd: number, event: Buffer | null): number;
  epoll_wait(epfd: number, events: Buffer, max: number, timeoutMs: number): number;
  splice(fdIn: number, offIn: null, fdOut: number, offOut: null, len: number, flags: number): number;
  pipe2(fds: Buffer, flags: number): number;
  fcntl(fd: number, cmd: number, arg: number): number;
  shutdown(fd: number, how: number): number;
  close(fd: number): number;
  eventfd(initval: number, flags: number): number;
  read(fd: number, buf: Buffer, len: number): number;
  recv(fd: number, buf: Buffer, len: number, flags: number): number;
  send(fd: number, buf: Buffer, len: number, flags: number): number;
  write(fd: number, buf: Buffer, len: number): number;
  getsockopt(fd: number, level: number, name: number, val: Buffer, len: Buffer): number;
  setsockopt(fd: number, level: number, name: number, val: Buffer, len: number): number;
  socket(domain: number, type: number, protocol: number): number;
  /** `addr`: a struct sockaddr_in or sockaddr_in6 (sockaddr.ts). */
  bind(fd: number, addr: Buffer, len: number): number;
  listen(fd: number, backlog: number): number;
  /** `len`: a socklen_t in/out (4 bytes). */
  accept4(fd: number, addr: Buffer, len: Buffer, flags: number): number;
  connect(fd: number, addr: Buffer, len: number): number;
  getsockname(fd: number, addr: Buffer, len: Buffer): number;
}

let libc: Libc | null = null;

export function libcCalls(): Libc {
  if (libc === null) {
    const lib = koffi.load('libc.so.6');
    libc = {
      epoll_create1: lib.func('int epoll_create1(int flags)'),
      epoll_ctl: lib.func('int epoll_ctl(int epfd, int op, int fd, uint8_t *event)'),
      epoll_wait: lib.func('int epoll_wait(int epfd, uint8_t *events, int max, int timeout)'),
      splice: lib.func('long splice(int fd_in, void *off_in, int fd_out, void *off_out, size_t len, unsigned int flags)'),
      pipe2: lib.func('int pipe2(uint8_t *fds, int flags)'),
      fcntl: lib.func('int fcntl(int fd, int cmd, int arg)'),
      shutdown: lib.func('int shutdown(int fd, int how)'),
      close: lib.func('int close(int fd)'),
      eventfd: lib.func('int eventfd(unsigned int initval, int flags)'),
      read: lib.func('long read(int fd, uint8_t *buf, size_t len)'),
      recv: lib.func('long recv(int fd, uint8_t *buf, size_t len, int flags)'),
      send: lib.func('long send(int fd, uint8_t *buf, size_t len, int flags)'),
      write: lib.func('long write(int fd, uint8_t *buf, size_t len)'),
      getsockopt: lib.func('int getsockopt(int fd, int level, int name, uint8_t *val, uint8_t *len)'),
      setsockopt: lib.func('int setsockopt(int fd, int level, int name, uint8_t *val, uint32_t len)'),
      socket: lib.func('int socket(int domain, int type, int protocol)'),
      bind: lib.func('int bind(int fd, uint8_t *addr, uint32_t len)'),
      listen: lib.func('int listen(int fd, int backlog)'),
      accept4: lib.func('int accept4(int fd, uint8_t *addr, uint8_t *len, int flags)'),
      connect: lib.func('int connect(int fd, uint8_t *addr, uint32_t len)'),
      getsockname: lib.func('int getsockname(int fd, uint8_t *addr, uint8_t *len)'),
    } as Libc;
  }
  return libc;
}

/**
 * A Buffer for koffi to pass as a pointer, and a typed view of the same memory to read and write
 * it through: an element store is a plain move, where Buffer's writeUInt32LE and friends check
 * their arguments on every call (the relay makes a few such calls per connection).
 */
export function words<T extends Uint32Array | Int32Array>(view: T): [Buffer, T] {
  return [Buffer.from(view.buffer, view.byteOffset, view.byteLength), view];
}

// Taken off koffi's exports once: that object is a dictionary, and a property looked up in it on
// every EAGAIN cost a hash lookup each time.
const koffiErrno = koffi.errno;
export const errno = (): number => koffiErrno();

// struct epoll_event is packed on x86-64 (12 bytes), naturally aligned elsewhere (16).
export const EPOLL_EVENT_SIZE = process.arch === 'x64' ? 12 : 16;
export const EPOLL_DATA_OFFSET = process.arch === 'x64' ? 4 : 8;

// Linux values (the same on x86-64 and arm64).
export const EPOLL_CTL_ADD = 1;
export const EPOLL_CTL_DEL = 2;
export const EPOLLIN = 0x001;
export const EPOLLOUT = 0x004;
export const EPOLLERR = 0x008;
export const EPOLLHUP = 0x010;
export const EPOLLRDHUP = 0x2000;
export const EPOLLET = 0x80000000;
export const SPLICE_F_MOVE = 1;
export const SPLICE_F_NONBLOCK = 2;
export const O_NONBLOCK = 0o4000;
export const O_CLOEXEC = 0o2000000;
export const F_SETPIPE_SZ = 1031;
export const F_GETPIPE_SZ = 1032;
export const SHUT_WR = 1;
export const MSG_NOSIGNAL = 0x4000;
export const EAGAIN = 11;
export const EINTR = 4;
export const EINPROGRESS = 115;
export const EMFILE = 24;
export const ENFILE = 23;
export const AF_INET = 2;
export const AF_INET6 = 10;
export const SOCK_STREAM = 1;
export const SOCK_NONBLOCK = O_NONBLOCK;
export const SOCK_CLOEXEC = O_CLOEXEC;
