// What the proxy's main thread and the splice relay's worker thread tell each other. Both sides
// send flat runs of numbers, one record after another: the worker's as a transferred
// Float64Array, [kind, id, slot, n, ...n fields] (slot: the connection's slot of shared counters,
// -1 for a record about no connection), the main thread's rare operations as an array, [op, id,
// n, ...n fields]. Addresses travel in the six-number form of kernel/sockaddr.ts.

/** Main -> worker: stop relaying connection `id` and reset both of its sockets; answered by EV_RELEASED. Fields: [slot]. */
export const OP_RELEASE = 1;
/** Main -> worker: the guard's keepalive for half-closed connections changed. Fields: [idleSec, intervalSec, count], all 0 for off. */
export const OP_KEEPALIVE = 2;
/** Main -> worker: stop accepting, close every listening socket; answered by EV_UNLISTENED. id 0, no fields. */
export const OP_UNLISTEN = 3;

/**
 * A client was accepted (in the slot its header names). Fields: [listener index, epoch ms, client
 * fd, client address (6), target address (6)]. The target is the original destination for an original-destination
 * listener, family 0 for a route (its fixed upstream).
 */
export const EV_ACCEPTED = 1;
/** The upstream connection is up. Fields: [epoch ms, upstream fd, our upstream address (6)]. */
export const EV_CONNECTED = 2;
/**
 * The connection ended before it could relay; the client was reset. Fields: [index in
 * REFUSE_REASONS, errno (0: our own connect timer), epoch ms].
 */
export const EV_REFUSED = 3;
/** A FIN was read. Fields: [direction (0 c2s, 1 s2c), epoch ms]. */
export const EV_FIN = 4;
/** Everything before that FIN was written and the destination shut down for writing. Fields: [direction, epoch ms]. */
export const EV_FIN_FORWARDED = 5;
/**
 * A socket failed; both were reset and closed. Fields: [side (0 downstream, 1 upstream), errno,
 * where (FAIL_*), ...FINAL_FIELDS].
 */
export const EV_FAILED = 6;
/** Both directions ended with a forwarded FIN; both sockets closed. Fields: FINAL_FIELDS. */
export const EV_DONE = 7;
/** Answer to OP_RELEASE: both sockets reset and closed. Fields: FINAL_FIELDS. */
export const EV_RELEASED = 8;
/** The guard's keepalive is now on both sockets. Fields: [idleSec, intervalSec, count]. */
export const EV_GUARDED = 11;
/** Answer to OP_UNLISTEN. id 0, no fields. */
export const EV_UNLISTENED = 9;
/**
 * Accepting failed, or a client was reset for want of a descriptor for its upstream (EMFILE,
 * ENFILE: accepting pauses briefly). Fields: [errno (-1: every slot taken), listener index,
 * 0 accept | 1 upstream socket]. id 0.
 */
export const EV_ACCEPT_ERROR = 10;

/**
 * The last counters of a connection whose slot the worker is giving up (it may hand the slot to
 * the next connection at once), and when it closed: [bytes c2s, bytes s2c, last activity epoch
 * ms, closed epoch ms].
 */
export const FINAL_FIELDS = 4;

/** Close reasons the worker can give a connection it refuses, by index. */
export const REFUSE_REASONS = ['connect-refused', 'connect-timeout', 'connect-unreachable', 'connect-error', 'no-original-dst', 'loop-refused'] as const;

export const FAIL_READ = 0;
export const FAIL_WRITE = 1;
/** EOF read, but the kernel held a reset for the socket (an RST after its last bytes). */
export const FAIL_AFTER_EOF = 2;
/** The destination had been reset before our FIN reached it. */
export const FAIL_BEFORE_FIN = 3;
/** An error reported while nothing was being read from the socket. */
export const FAIL_IDLE = 4;

/**
 * Shared live counters, SLOT_FIELDS float64 per connection: [last activity (epoch ms), bytes
 * client->server, bytes server->client, paused bits (1 c2s, 2 s2c), bytes held in the pipe c2s,
 * the same s2c, client descriptor + 1, upstream descriptor + 1]. The worker writes them as it
 * relays; timers, metrics, the admin API and tests read them without a message. The descriptors
 * (0: none; a slot that was never used is all zeros) are the worker's until it closes them: it
 * clears them first, so if the worker dies the main thread resets exactly what it still held,
 * connections not yet reported included.
 */
export const SLOT_FIELDS = 8;
export const SLOT_ACTIVITY = 0;
export const SLOT_BYTES = 1; // + direction
export const SLOT_PAUSED = 3;
export const SLOT_HELD = 4; // + direction
export const SLOT_FDS = 6; // + side (0 client, 1 upstream)

/** Control words in a shared Int32Array: [0] = 1 when the worker must exit. */
export const CTRL_EXIT = 0;
