// A set of objects kept in a plain array, for the sets that gain and lose a member per connection.
//
// A Map or Set that churns like that makes a new hash table every few dozen changes, and once its
// table has been promoted to the old generation V8 makes every later table there too. Each
// abandoned table still lists the connections it held, young ones among them, and a young
// collection counts every old-to-young pointer as live: those dead connections survived, were
// copied and then promoted (bench/books-cost.ts: about 2.5 MB of each young collection survived on
// the main thread, 0.5 MB once its connection table was an array). Here add() appends and
// delete() moves the last member into the hole, both O(1); each member keeps its position in a
// field of its own, read and written through `at`.

export interface Position<T> {
  get(t: T): number;
  set(t: T, i: number): void;
}

export class DenseSet<T> {
  private readonly items: T[] = [];

  constructor(private readonly at: Position<T>) {}

  get size(): number {
    return this.items.length;
  }

  has(t: T): boolean {
    const i = this.at.get(t);
    return i >= 0 && i < this.items.length && this.items[i] === t;
  }

  add(t: T): void {
    if (this.has(t)) return;
    this.at.set(t, this.items.length);
    this.items.push(t);
  }

  /** True when `t` was a member. */
  delete(t: T): boolean {
    if (!this.has(t)) return false;
    const i = this.at.get(t);
    const last = this.items.pop()!;
    if (last !== t) {
      this.items[i] = last;
      this.at.set(last, i);
    }
    this.at.set(t, -1);
    return true;
  }

  /** The members now, as a copy: the set may change while the caller goes through them. */
  snapshot(): T[] {
    return this.items.slice();
  }
}
