// `halfclose doctor`'s judgement: from the kernel settings of a namespace and the proxy that runs
// there (a halfclose config, or an Envoy-like proxy known by its idle timeout), whether the
// half-close leak of DESIGN.md §1 can happen, and what to change. Pure: no I/O, so it is tested
// against settings written down in the test.

import { CLOSE_WAIT_SYSCTL, DEFAULT_CLOSE_WAIT_SEC, type KernelSettings } from '../kernel/conntrack-settings.js';
import type { ProxyConfig } from '../config/schema.js';
import { planGuard, type GuardStatus } from '../proxy/guard.js';
import { formatDuration } from '../util/duration.js';

/** The proxy judged: halfclose with a resolved config, or a proxy without keepalive (Envoy's tcp_proxy) and its idle timeout. */
export type DoctorTarget =
  | { kind: 'halfclose'; config: ProxyConfig; source: string }
  | { kind: 'envoy-like'; idleTimeoutMs: number };

export type FindingLevel = 'leak' | 'warn' | 'ok' | 'info';

export interface Finding {
  /** Stable id, for scripts reading `--json`. */
  id: string;
  level: FindingLevel;
  /** What is the case, in plain words. */
  message: string;
  /** What to change, when something should change. */
  fix?: string;
}

export interface DoctorReport {
  netns: string | null;
  target: { kind: DoctorTarget['kind']; description: string };
  settings: KernelSettings;
  /** true: the leak can happen; false: it cannot (with these settings and this proxy). */
  leakPossible: boolean;
  /** One sentence: the answer. */
  verdict: string;
  findings: Finding[];
  /** The guard's plan, for a halfclose target. */
  guard?: GuardStatus;
}

const S = {
  loose: 'net.netfilter.nf_conntrack_tcp_loose',
  liberal: 'net.netfilter.nf_conntrack_tcp_be_liberal',
  invalidRst: 'net.netfilter.nf_conntrack_tcp_ignore_invalid_rst',
  max: 'net.netfilter.nf_conntrack_max',
  count: 'net.netfilter.nf_conntrack_count',
  kaTime: 'net.ipv4.tcp_keepalive_time',
  kaIntvl: 'net.ipv4.tcp_keepalive_intvl',
  kaProbes: 'net.ipv4.tcp_keepalive_probes',
  finTimeout: 'net.ipv4.tcp_fin_timeout',
} as const;

/** A conntrack table this full drops new entries soon; entries of idle connections are evicted first. */
const TABLE_NEARLY_FULL = 0.9;

export function describeTarget(t: DoctorTarget): string {
  if (t.kind === 'envoy-like') {
    const idle = t.idleTimeoutMs === 0 ? 'no idle timeout' : `idle timeout ${formatDuration(t.idleTimeoutMs)}`;
    return `an Envoy-like proxy (half-close propagated, no keepalive, ${idle})`;
  }
  const k = t.config.keepaliveHalfClosed;
  const ka = k.mode === 'fixed' ? `${k.idleSec}:${k.intervalSec}:${k.count}` : k.mode;
  return `halfclose (${t.source}: --keepalive ${ka}, idle timeout ${formatDuration(t.config.idleTimeoutMs)})`;
}

export function assess(settings: KernelSettings, target: DoctorTarget, netns: string | null = null): DoctorReport {
  const findings: Finding[] = [];
  const cwRead = settings[CLOSE_WAIT_SYSCTL];
  const report = (leakPossible: boolean, verdict: string, guard?: GuardStatus): DoctorReport => ({
    netns,
    target: { kind: target.kind, description: describeTarget(target) },
    settings,
    leakPossible,
    verdict,
    findings,
    ...(guard ? { guard } : {}),
  });

  if (cwRead === null) {
    // REDIRECT is NAT, and NAT needs conntrack: without it there is no entry to lose.
    findings.push({
      id: 'conntrack-absent',
      level: 'ok',
      message: `conntrack is not loaded in this namespace (${CLOSE_WAIT_SYSCTL} is absent): no iptables REDIRECT can be working here, so no conntrack entry can expire under a half-closed connection`,
    });
    if (target.kind === 'halfclose') {
      const g = planGuard(target.config, null);
      if (g.halfClosed) {
        findings.push({
          id: 'guard-default',
          level: 'info',
          message: `the guard assumes the kernel default ${DEFAULT_CLOSE_WAIT_SEC}s and still probes half-closed connections (${g.halfClosed.idleSec}:${g.halfClosed.intervalSec}:${g.halfClosed.count}), which finds vanished peers; it re-reads the sysctl every 5 s should conntrack be loaded later`,
        });
      }
      return report(false, 'the half-close leak cannot happen here: there is no conntrack, hence no REDIRECT', g);
    }
    return report(false, 'the half-close leak cannot happen here: there is no conntrack, hence no REDIRECT');
  }

  const cw = cwRead;
  let leakPossible: boolean;
  let verdict: string;
  let guard: GuardStatus | undefined;

  if (target.kind === 'envoy-like') {
    const idle = target.idleTimeoutMs;
    if (idle === 0 || idle > cw * 1000) {
      leakPossible = true;
      const until = idle === 0 ? 'forever (no idle timeout)' : `until the idle timeout, ${formatDuration(idle)} after the last byte`;
      verdict = `the half-close leak CAN happen: a connection half-closed and idle for more than ${cw}s loses its conntrack entry, the application's late bare FIN never reaches the proxy, and the proxy holds a FIN-WAIT-2 and a CLOSE-WAIT socket ${until}`;
      findings.push({
        id: 'close-wait-vs-idle',
        level: 'leak',
        message: `${CLOSE_WAIT_SYSCTL} = ${cw}s is shorter than the proxy's ${idle === 0 ? 'idle timeout (disabled)' : `idle timeout ${formatDuration(idle)}`}, and nothing refreshes the entry of an idle half-closed connection`,
        fix: `run halfclose (its guard keeps the entries alive with keepalive), or raise ${CLOSE_WAIT_SYSCTL} above the idle timeout (sysctl -w ${CLOSE_WAIT_SYSCTL}=${idle === 0 ? 3600 : Math.ceil(idle / 1000) + 60}), or enable TCP keepalive on the proxy's downstream sockets with idle and interval below ${cw}s (the kernel's default interval ${settings[S.kaIntvl] ?? 75}s ${(settings[S.kaIntvl] ?? 75) >= cw ? 'is not' : 'is'} enough); lowering the idle timeout below ${cw}s also ends the leak, but cuts legitimate idle connections`,
      });
    } else {
      leakPossible = false;
      verdict = `the half-close leak cannot last: the idle timeout ${formatDuration(idle)} ends an idle half-closed connection before its conntrack entry expires (${cw}s) — at the price of cutting every connection idle for ${formatDuration(idle)}`;
      findings.push({
        id: 'close-wait-vs-idle',
        level: 'warn',
        message: `the idle timeout ${formatDuration(idle)} is not above ${CLOSE_WAIT_SYSCTL} = ${cw}s: no leak, but legitimate idle and half-closed connections are cut after ${formatDuration(idle)}`,
        fix: 'run halfclose with its guard to keep idle half-closed connections without leaking them',
      });
    }
  } else {
    guard = planGuard(target.config, cw);
    const k = guard.halfClosed;
    if (k === null) {
      const idle = target.config.halfCloseTimeoutMs > 0 ? target.config.halfCloseTimeoutMs : target.config.idleTimeoutMs;
      const which = target.config.halfCloseTimeoutMs > 0 ? 'half-close timeout' : 'idle timeout';
      if (idle === 0 || idle > cw * 1000) {
        leakPossible = true;
        verdict = `the half-close leak CAN happen: keepalive on half-closed connections is off, so one idle for more than ${cw}s loses its conntrack entry and the application's late bare FIN leaks two sockets ${idle === 0 ? 'forever' : `until the ${which} (${formatDuration(idle)})`}`;
        findings.push({ id: 'guard-off', level: 'leak', message: guard.warnings[0] ?? 'keepalive on half-closed connections is off', fix: 'use --keepalive auto (the default)' });
      } else {
        leakPossible = false;
        verdict = `the half-close leak cannot last: the ${which} ${formatDuration(idle)} ends idle half-closed connections before their entries expire (${cw}s), but cuts legitimate ones`;
        findings.push({ id: 'guard-off', level: 'warn', message: `keepalive on half-closed connections is off; the ${which} ${formatDuration(idle)} ends them first`, fix: 'use --keepalive auto (the default) and no half-close timeout' });
      }
    } else if (k.idleSec >= cw || k.intervalSec >= cw) {
      leakPossible = true;
      verdict = `the half-close leak CAN happen: the guard's keepalive ${k.idleSec}:${k.intervalSec}:${k.count} does not probe more often than the ${cw}s CLOSE_WAIT timeout, so entries can expire between probes`;
      for (const w of guard.warnings) findings.push({ id: 'guard-too-slow', level: 'leak', message: w, fix: `use --keepalive auto, or idle and interval below ${cw}s` });
    } else {
      leakPossible = false;
      const reclaim = k.idleSec + k.intervalSec * k.count;
      verdict = `the half-close leak cannot happen: the guard probes half-closed connections every ${k.intervalSec}s (after ${k.idleSec}s idle), below the ${cw}s CLOSE_WAIT timeout, so their conntrack entries never expire; a lost entry is found and both sockets reclaimed within ${reclaim}s`;
      findings.push({
        id: 'guard',
        level: 'ok',
        message: `the guard's keepalive ${k.idleSec}:${k.intervalSec}:${k.count} (idle:interval:count${guard.mode === 'auto' ? ', a third of the CLOSE_WAIT timeout' : ''}) refreshes each half-closed connection's entry well within ${cw}s`,
      });
      for (const w of guard.warnings) findings.push({ id: 'guard-warning', level: 'warn', message: w });
    }
  }

  // The rest holds for any proxy behind REDIRECT.
  const loose = settings[S.loose];
  if (loose === 0) {
    findings.push({
      id: 'tcp-loose-off',
      level: 'warn',
      message: `${S.loose} = 0: after an entry expires, even the application's data packets cannot create a new one, so a late message (not only a bare FIN) bypasses the proxy and is lost`,
      fix: `sysctl -w ${S.loose}=1 (the kernel default)`,
    });
  } else if (loose !== null) {
    findings.push({ id: 'tcp-loose', level: 'ok', message: `${S.loose} = ${loose}: a late data packet after expiry is picked up as a new entry and redirected again; only a bare FIN is lost` });
  }
  if (settings[S.liberal] === 1) {
    findings.push({ id: 'be-liberal', level: 'info', message: `${S.liberal} = 1: out-of-window packets are not marked INVALID; this does not bring an expired entry back` });
  }
  if (settings[S.invalidRst] === 1) {
    findings.push({ id: 'ignore-invalid-rst', level: 'info', message: `${S.invalidRst} = 1: RSTs conntrack considers invalid are not marked INVALID, which helps the port-reuse symptom (a new SYN meeting a stale FIN-WAIT-2 socket) but not the leak itself` });
  }
  const max = settings[S.max];
  const count = settings[S.count];
  if (max !== null && count !== null && max > 0) {
    const ratio = count / max;
    findings.push(
      ratio >= TABLE_NEARLY_FULL
        ? {
            id: 'table-full',
            level: 'warn',
            message: `the conntrack table is ${Math.round(ratio * 100)}% full (${count} of ${max}): new entries are dropped and entries can be lost${target.kind === 'halfclose' && !leakPossible ? ' (the guard reclaims connections whose entry is lost)' : ', leaking the half-closed connections they belonged to'}`,
            fix: `raise ${S.max}`,
          }
        : { id: 'table', level: 'ok', message: `the conntrack table holds ${count} of ${max} entries` },
    );
  }
  const kaTime = settings[S.kaTime];
  const kaIntvl = settings[S.kaIntvl];
  if (kaTime !== null && kaIntvl !== null && (kaTime >= cw || kaIntvl >= cw)) {
    findings.push({
      id: 'kernel-keepalive-defaults',
      level: 'info',
      message: `the kernel's keepalive defaults (${S.kaTime} = ${kaTime}s, ${S.kaIntvl} = ${kaIntvl}s, ${settings[S.kaProbes] ?? '?'} probes) do not probe within ${cw}s: a proxy that only turns SO_KEEPALIVE on (HAProxy option clitcpka, nginx so_keepalive=on) still loses entries${target.kind === 'halfclose' ? '; halfclose sets its own values per socket' : ''}`,
    });
  }
  const fin = settings[S.finTimeout];
  if (fin !== null) {
    findings.push({ id: 'fin-timeout', level: 'info', message: `${S.finTimeout} = ${fin}s applies only to FIN-WAIT-2 sockets no process holds; a proxy's leaked FIN-WAIT-2 socket is still held, so it does not end the leak` });
  }

  return report(leakPossible, verdict, guard);
}
