// An upstream that does not answer SYNs until the test says so: a listening socket on 127.0.0.1
// with a backlog of 0 that never accepts by itself (node:net always accepts, hence libc through
// koffi). Once one connection waits in its accept queue the kernel drops further SYNs, so a
// connect to it neither succeeds nor fails — a black-holed upstream — until `admitNext()` makes
// room; the client's next SYN retransmission (about 1 s later) then completes.

import net from 'node:net';
import { once } from 'node:events';
import koffi from 'koffi';

const lib = koffi.load('libc.so.6');
const socketFn = lib.func('int socket(int, int, int)');
const bindFn = lib.func('int bind(int, uint8_t *addr, uint32_t len)');
const listenFn = lib.func('int listen(int, int)');
const acceptFn = lib.func('int accept(int, uint8_t *addr, _Inout_ uint32_t *len)');
const closeFn = lib.func('int close(int)');
const getsocknameFn = lib.func('int getsockname(int, _Out_ uint8_t *addr, _Inout_ uint32_t *len)');

export interface Blackhole {
  port: number;
  /** Accepts (and closes) the connection filling the queue, so the next SYN gets through. */
  admitNext(): void;
  /** Accepts the next queued connection as a net.Socket (paused, half-open allowed). */
  acceptSocket(): net.Socket;
  close(): void;
}

export async function blackholeUpstream(): Promise<Blackhole> {
  const fd = socketFn(2 /* AF_INET */, 1 /* SOCK_STREAM */, 0) as number;
  const addr = Buffer.alloc(16);
  addr.writeUInt16LE(2, 0); // sin_family; port 0: the kernel picks one
  addr.set([127, 0, 0, 1], 4);
  if (bindFn(fd, addr, 16) !== 0 || listenFn(fd, 0) !== 0) throw new Error('blackhole: bind/listen failed');
  const out = Buffer.alloc(16);
  getsocknameFn(fd, out, [16]);
  const port = out.readUInt16BE(2);
  const filler = net.connect(port, '127.0.0.1'); // fills the accept queue
  await once(filler, 'connect');
  const accepted: number[] = [];
  const acceptFd = (): number => {
    const c = acceptFn(fd, Buffer.alloc(16), [16]) as number;
    if (c < 0) throw new Error('blackhole: accept failed');
    return c;
  };
  return {
    port,
    admitNext() {
      closeFn(acceptFd());
      filler.destroy();
    },
    acceptSocket() {
      const c = acceptFd();
      accepted.push(c);
      const s = new net.Socket({ fd: c, readable: true, writable: true, allowHalfOpen: true });
      s.pause();
      return s;
    },
    close() {
      filler.destroy();
      closeFn(fd);
    },
  };
}
