// Seeded mutations of fixture text for parser fuzz tests: truncations, dropped or doubled
// characters, swapped lines, random bytes. Seeded so a failure can be replayed.

/** mulberry32: a tiny seeded PRNG, enough to make failures reproducible. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const NOISE = ['', ' ', '\t', ':', '[', ']', '(', ')', '"', ',', '=', '%', '*', '\n', '\u0000', 'é', '::', 'users:(', 'timer:(', 'src=', '65536', '-1', '999999999999999999999'];

/** `count` mutated copies of the seeds. */
export function* mutations(seeds: string[], count: number, seed: number): Generator<string> {
  const rnd = prng(seed);
  const pick = <T>(xs: T[]): T => xs[Math.floor(rnd() * xs.length)]!;
  for (let i = 0; i < count; i++) {
    let s = pick(seeds);
    const edits = 1 + Math.floor(rnd() * 4);
    for (let e = 0; e < edits; e++) {
      const at = Math.floor(rnd() * (s.length + 1));
      switch (Math.floor(rnd() * 6)) {
        case 0: // truncate
          s = s.slice(0, at);
          break;
        case 1: // drop a run of characters
          s = s.slice(0, at) + s.slice(at + 1 + Math.floor(rnd() * 12));
          break;
        case 2: // insert noise
          s = s.slice(0, at) + pick(NOISE) + s.slice(at);
          break;
        case 3: // replace a character with a random one
          s = s.slice(0, at) + String.fromCharCode(32 + Math.floor(rnd() * 95)) + s.slice(at + 1);
          break;
        case 4: {
          // swap two lines
          const lines = s.split('\n');
          const a = Math.floor(rnd() * lines.length);
          const b = Math.floor(rnd() * lines.length);
          [lines[a], lines[b]] = [lines[b]!, lines[a]!];
          s = lines.join('\n');
          break;
        }
        default: // duplicate a slice
          s = s.slice(0, at) + s.slice(Math.max(0, at - 20), at) + s.slice(at);
      }
    }
    yield s;
  }
}
