"""Rules for restart, reschedule, update and migrate policies, resources, logs and disks.

Policy checks return issues (field, message) rather than reporting them, so a policy merged
from the job into a group (or from a group into a task) is only reported where it was written.
"""

from __future__ import annotations

from yurt.structs import (EphemeralDisk, LogConfig, MigrateStrategy, ReschedulePolicy, Resources,
                          RestartPolicy, UpdateStrategy)

from .errors import Path
from .validate_common import SECOND, Issue, Report, dur

RESTART_MIN_INTERVAL = 5 * SECOND
RESCHEDULE_MIN_DELAY = 5 * SECOND
RESCHEDULE_MIN_INTERVAL = 15 * SECOND
DELAY_FUNCTIONS = ("constant", "exponential", "fibonacci")


def restart_issues(p: RestartPolicy) -> list[Issue]:
    out: list[Issue] = []
    if p.mode is not None and p.mode not in ("fail", "delay"):
        out.append(("Mode", f'restart mode "{p.mode}" is not known: use "fail" or "delay"'))
    if p.attempts is not None:
        if p.attempts < 0:
            out.append(("Attempts", f'restart attempts {p.attempts} is negative: use 0 or more'))
        elif p.attempts == 0 and p.mode == "delay":
            out.append(("Attempts", 'restart attempts = 0 with mode = "delay" is ambiguous: '
                                    'set mode = "fail" or allow some attempts'))
    if p.delay is not None and p.delay < 0:
        out.append(("Delay", f'restart delay {dur(p.delay)} is negative: use 0 or more'))
    if p.interval is not None:
        if p.interval < RESTART_MIN_INTERVAL:
            out.append(("Interval", f'restart interval {dur(p.interval)} is too short: '
                                    f'use {dur(RESTART_MIN_INTERVAL)} or more'))
        elif p.attempts and p.delay and p.attempts * p.delay > p.interval:
            out.append(("Interval", f'{p.attempts} restarts {dur(p.delay)} apart do not fit in an '
                                    f'interval of {dur(p.interval)}: set interval to at least '
                                    f'{dur(p.attempts * p.delay)} or lower attempts or delay'))
    return out


def _reschedule_span(p: ReschedulePolicy) -> int:
    """How long `attempts` reschedules take with the policy's delays (Nomad's viableAttempts)."""
    delay, ceiling, n = p.delay or 0, p.max_delay or 0, p.attempts or 0
    if p.delay_function == "constant":
        return n * delay
    if p.delay_function == "exponential":
        total = 0
        for i in range(n):
            step = delay * 2 ** i
            total = total + ceiling if step > ceiling else step
        return total
    slots = [delay, delay]
    capped = False
    for i in range(2, n):
        nxt = slots[i - 1] + (ceiling if capped else slots[i - 2])
        if not capped and nxt > ceiling:
            nxt, capped = ceiling, True
        slots.append(nxt)
    return slots[max(n, 1) - 1] if n else 0


def reschedule_issues(p: ReschedulePolicy) -> list[Issue]:
    attempts, unlimited = p.attempts or 0, bool(p.unlimited)
    out: list[Issue] = []
    if attempts < 0:
        out.append(("Attempts", f'reschedule attempts {attempts} is negative: use 0 or more'))
    if attempts <= 0 and not unlimited:
        return out
    interval, delay = p.interval or 0, p.delay or 0
    if attempts > 0 and unlimited:
        out.append(("Unlimited", f'reschedule with attempts = {attempts} and unlimited = true is '
                                 'ambiguous: remove attempts or set unlimited = false'))
    elif attempts > 0 and interval <= 0:
        out.append(("Interval", 'reschedule attempts need an interval to count them in: '
                                'set interval, like "1h"'))
    timing_ok = True
    if p.delay is not None and delay < RESCHEDULE_MIN_DELAY:
        out.append(("Delay", f'reschedule delay {dur(delay)} is too short: '
                             f'use {dur(RESCHEDULE_MIN_DELAY)} or more'))
        timing_ok = False
    if p.delay_function is not None and p.delay_function not in DELAY_FUNCTIONS:
        out.append(("DelayFunction", f'delay_function "{p.delay_function}" is not known: '
                                     'use constant, exponential or fibonacci'))
        timing_ok = False
    if p.delay_function not in (None, "constant") and p.max_delay is not None:
        if p.max_delay < RESCHEDULE_MIN_DELAY:
            out.append(("MaxDelay", f'reschedule max_delay {dur(p.max_delay)} is too short: '
                                    f'use {dur(RESCHEDULE_MIN_DELAY)} or more'))
            timing_ok = False
        elif p.max_delay < delay:
            out.append(("MaxDelay", f'reschedule max_delay {dur(p.max_delay)} is shorter than delay '
                                    f'{dur(delay)}: raise max_delay or lower delay'))
            timing_ok = False
    if not unlimited and p.interval is not None:
        if interval < RESCHEDULE_MIN_INTERVAL:
            out.append(("Interval", f'reschedule interval {dur(interval)} is too short: '
                                    f'use {dur(RESCHEDULE_MIN_INTERVAL)} or more'))
        elif timing_ok and p.delay_function in DELAY_FUNCTIONS and p.delay is not None:
            span = _reschedule_span(p)
            if span > interval:
                out.append(("Interval", f'{attempts} reschedule attempts with delay {dur(delay)} '
                                        f'({p.delay_function}) take {dur(span)}, more than the '
                                        f'interval {dur(interval)}: set interval to at least '
                                        f'{dur(span)} or lower attempts'))
    return out


def update_issues(u: UpdateStrategy) -> list[Issue]:
    out: list[Issue] = []
    if u.max_parallel is not None and u.max_parallel < 0:
        out.append(("MaxParallel", f'update max_parallel {u.max_parallel} is negative: use 0 or more'))
    if u.max_parallel == 0:
        return out  # no update strategy: nothing else applies
    if u.health_check is not None and u.health_check not in ("checks", "task_states", "manual"):
        out.append(("HealthCheck", f'update health_check "{u.health_check}" is not known: '
                                   'use checks, task_states or manual'))
    if u.canary is not None and u.canary < 0:
        out.append(("Canary", f'update canary {u.canary} is negative: use 0 or more'))
    if u.auto_promote and not u.canary:
        out.append(("AutoPromote", 'auto_promote needs canaries to promote: set canary to 1 or more '
                                   'or remove auto_promote'))
    mht, hd, pd = u.min_healthy_time, u.healthy_deadline, u.progress_deadline
    if mht is not None and mht < 0:
        out.append(("MinHealthyTime", f'min_healthy_time {dur(mht)} is negative: use 0 or more'))
    if hd is not None and hd <= 0:
        out.append(("HealthyDeadline", 'healthy_deadline must be longer than 0: set it, like "5m"'))
    if pd is not None and pd < 0:
        out.append(("ProgressDeadline", f'progress_deadline {dur(pd)} is negative: use 0 (none) or more'))
    if mht is not None and hd is not None and hd > 0 and mht >= hd:
        out.append(("MinHealthyTime", f'min_healthy_time {dur(mht)} must be shorter than '
                                      f'healthy_deadline {dur(hd)}: lower it or raise healthy_deadline'))
    if pd and hd is not None and hd > 0 and hd >= pd:
        out.append(("ProgressDeadline", f'progress_deadline {dur(pd)} must be longer than '
                                        f'healthy_deadline {dur(hd)}: raise it, or set it to 0'))
    if u.stagger is not None and u.stagger <= 0:
        out.append(("Stagger", 'update stagger must be longer than 0: set it, like "30s"'))
    return out


def migrate_issues(m: MigrateStrategy) -> list[Issue]:
    out: list[Issue] = []
    if m.max_parallel is not None and m.max_parallel < 0:
        out.append(("MaxParallel", f'migrate max_parallel {m.max_parallel} is negative: use 0 or more'))
    if m.health_check is not None and m.health_check not in ("checks", "task_states"):
        out.append(("HealthCheck", f'migrate health_check "{m.health_check}" is not known: '
                                   'use checks or task_states'))
    mht, hd = m.min_healthy_time, m.healthy_deadline
    if mht is not None and mht < 0:
        out.append(("MinHealthyTime", f'min_healthy_time {dur(mht)} is negative: use 0 or more'))
    if hd is not None and hd < 0:
        out.append(("HealthyDeadline", f'healthy_deadline {dur(hd)} is negative: use 0 or more'))
    if mht is not None and hd is not None and mht >= 0 and hd >= 0 and mht > hd:
        out.append(("MinHealthyTime", f'min_healthy_time {dur(mht)} is longer than healthy_deadline '
                                      f'{dur(hd)}: lower it or raise healthy_deadline'))
    return out


def validate_resources(r: Report, res: Resources, path: Path) -> None:
    cpu, cores = res.cpu, res.cores
    if cores is not None and cores < 0:
        r.error(path + ("Cores",), f'cores {cores} is negative: use 1 or more, or remove it')
    if cpu and cores:
        r.error(path + ("Cores",), 'a task can ask for cpu or cores, not both: remove one of them')
    elif not cores and cpu is not None and cpu < 1:
        r.error(path + ("CPU",), f'cpu {cpu} is too low: ask for at least 1 MHz (or set cores)')
    mem = res.memory_mb
    if mem is not None and mem < 10:
        r.error(path + ("MemoryMB",), f'memory {mem} MB is too low: ask for at least 10')
    mmax = res.memory_max_mb
    if mmax is not None and mmax not in (0, -1) and mem is not None and mmax < mem:
        r.error(path + ("MemoryMaxMB",), f'memory_max {mmax} MB is lower than memory {mem} MB: '
                                         'raise it, or use 0 (no oversubscription) or -1 (unlimited)')
    if res.disk_mb:
        r.error(path + ("DiskMB",), 'disk cannot be asked for by a task: remove it and set '
                                    'ephemeral_disk { size = ... } in the group')
    sec = res.secrets_mb
    if sec is not None and sec < 0:
        r.error(path + ("SecretsMB",), f'secrets {sec} MB is negative: use 0 or more')
    elif sec and mem is not None and sec > mem:
        r.error(path + ("SecretsMB",), f'secrets {sec} MB is more than memory {mem} MB: '
                                       'lower secrets or raise memory')


def validate_logs(r: Report, logs: LogConfig, path: Path, disk: EphemeralDisk | None) -> None:
    files, size = logs.max_files, logs.max_file_size_mb
    if files is not None and files < 1:
        r.error(path + ("MaxFiles",), f'logs max_files {files} is too low: keep at least 1 file')
    if size is not None and size < 1:
        r.error(path + ("MaxFileSizeMB",), f'logs max_file_size {size} MB is too low: use 1 or more')
    if (not logs.disabled and disk is not None and disk.size_mb is not None and files and size
            and files > 0 and size > 0 and files * size >= disk.size_mb):
        r.error(path, f'logs may use {files * size} MB ({files} files x {size} MB), which must be '
                      f'less than the group ephemeral_disk size of {disk.size_mb} MB: lower max_files '
                      'or max_file_size, or raise ephemeral_disk size')


def validate_ephemeral_disk(r: Report, disk: EphemeralDisk, path: Path) -> None:
    if disk.size_mb is not None and disk.size_mb < 10:
        r.error(path + ("SizeMB",), f'ephemeral_disk size {disk.size_mb} MB is too small: use 10 or more')
