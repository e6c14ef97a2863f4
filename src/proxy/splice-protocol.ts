// What the proxy's main thread and the splice relay's worker thread tell each other. Both sides
// send flat arrays of numbers (cheap to clone), a fixed number of fields per record.

/** Main -> worker, OP_FIELDS numbers each: [op, id, clientFd, upstreamFd, slot, capacity]. */
export const OP_FIELDS = 6;
/** Start relaying a connection: both sockets connected, neither read by Node. */
export const OP_ATTACH = 1;
/** Stop touching a connection's descriptors (the main thread is about to reset them); answered by EV_RELEASED. Fields: [op, id, clientFd, upstreamFd, 0, 0]. */
export const OP_RELEASE = 2;

/** Worker -> main, EV_FIELDS numbers each: [event, id, a, b, c]. */
export const EV_FIELDS = 5;
/** A FIN was read: a = direction (0 c2s, 1 s2c), b = epoch ms. */
export const EV_FIN = 1;
/** Everything before that FIN was written and the destination shut down for writing: a = direction, b = epoch ms. */
export const EV_FIN_FORWARDED = 2;
/**
 * A socket failed; the worker has let go of both descriptors. a = side (0 downstream, 1
 * upstream), b = errno, c = where (the FAIL_* below).
 */
export const EV_FAILED = 3;
/** Both directions ended with a forwarded FIN; the worker has let go of both descriptors. */
export const EV_DONE = 4;
/** Answer to OP_RELEASE: the worker has let go of both descriptors. */
export const EV_RELEASED = 5;

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
 * the same s2c]. The worker writes them as it relays; timers, metrics, the admin API and tests
 * read them without a message.
 */
export const SLOT_FIELDS = 6;
export const SLOT_ACTIVITY = 0;
export const SLOT_BYTES = 1; // + direction
export const SLOT_PAUSED = 3;
export const SLOT_HELD = 4; // + direction

/** Control words in a shared Int32Array: [0] = 1 when the worker must exit. */
export const CTRL_EXIT = 0;
