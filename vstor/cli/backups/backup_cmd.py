"""vstor backup policy | run | jobs | show | verify | restore | expire | media | report,
vstor audit log | verify, and vstor key rotate | list"""

from __future__ import annotations

import argparse
import json
import os

from vstor.cli import admin_cmd
from vstor.cli.backups import drill_cmd
from vstor.cli.common import add_admin_args, emit, pool_path, request, subcommand, table, when
from vstor.units import format_size

JOB = "the job's number (see 'vstor backup jobs')"


def register(sub: argparse._SubParsersAction) -> None:
    bk = sub.add_parser("backup", help="backup policies, jobs to tape, verify, restore, retention").add_subparsers(
        dest="action", required=True)
    pol = bk.add_parser("policy", help="create, list, show and delete backup policies").add_subparsers(
        dest="what", required=True)
    p = subcommand(pol, "create", cmd_policy_create, "a policy: what to back up, when, to which media")
    p.add_argument("name", help="the new policy's name")
    p.add_argument("--source", required=True, help="a group or a volume")
    p.add_argument("--library", required=True, help="the tape library the jobs write to")
    p.add_argument("--media", required=True, action="append", metavar="BARCODES",
                   help="the cartridges the policy may use: BARCODE or FIRST-LAST, repeatable")
    p.add_argument("--schedule", help='when it runs, in cron syntax, like "0 2 * * *" (UTC); none: by hand only')
    p.add_argument("--level", choices=["full", "incremental"], default="full",
                   help="what a scheduled run takes (default full)")
    p.add_argument("--full-every", metavar="DURATION", help="incrementals take a full this often, like 7d")
    p.add_argument("--retention", default="30d", metavar="DURATION", help="how long jobs are kept (default 30d)")
    p.add_argument("--encrypt", action="store_true", help="AES-256-GCM on the media, keyed from the pool's key")
    p.add_argument("--freeze", action="append", metavar="MOUNT", help="fsfreeze this mount point around the snapshot")
    p.add_argument("--no-verify", dest="verify", action="store_false", help="skip the read-back after each job")
    p.add_argument("--pre", metavar="CMD", help="shell command run before the job's snapshot (a database checkpoint, "
                   "fsfreeze -f); if it fails or times out the job fails, with its reason")
    p.add_argument("--post", metavar="CMD", help="shell command run after the job's snapshot, always (also after a "
                   "failed --pre); like fsfreeze -u")
    p.add_argument("--hook-timeout", metavar="DURATION",
                   help="how long --pre and --post may each run before they are killed (default 60s)")
    p.add_argument("--retries", type=int, default=0, metavar="N",
                   help="a client run that fails unreachable or cut off is tried N more times (default 0)")
    p.add_argument("--retry-delay", metavar="DURATION", help="between those tries, like 5m (default at once)")
    add_admin_args(p)
    subcommand(pol, "list", cmd_policy_list, "every policy with its next run")
    subcommand(pol, "show", cmd_policy_show, "one policy and its last jobs").add_argument("name", help="the policy")
    p = subcommand(pol, "delete", cmd_policy_delete, "delete a policy (its jobs stay restorable)")
    p.add_argument("name", help="the policy")
    add_admin_args(p)

    p = subcommand(bk, "run", cmd_run, "run a policy now")
    p.add_argument("policy", help="the policy to run")
    p.add_argument("--level", choices=["full", "incremental"], help="override the policy's level")
    p.add_argument("--wait", action="store_true", help="wait for the job to end (with a progress meter)")
    p = subcommand(bk, "jobs", cmd_jobs, "jobs, newest first")
    p.add_argument("--policy", help="only this policy's jobs")
    subcommand(bk, "show", cmd_show, "one job: chain, cartridges, positions, checksums").add_argument(
        "job", type=int, help=JOB)
    subcommand(bk, "verify", cmd_verify, "read a job back and check every checksum").add_argument(
        "job", type=int, help=JOB)
    p = subcommand(bk, "restore", cmd_restore, "restore a job (its chain) to new volumes")
    p.add_argument("job", type=int, help=JOB)
    p.add_argument("--to", metavar="NAME|DIR", help="new volume NAME (a group job: NAME-VOLUME each); for a "
                   "client job, a directory on the array host")
    p.add_argument("--to-client", metavar="CLIENT", help="a client job: stream the files back to this client's agent")
    p.add_argument("--target", metavar="DIR", help="with --to-client: the directory on the client")
    p.add_argument("--files", metavar="GLOB", help="a client job: only the files whose path matches, like '/etc/*'")
    p.add_argument("--wait", action="store_true", help="accepted for symmetry: a restore is always waited for")
    p = subcommand(bk, "files", cmd_files, "a client job's files: type, size, sha256, where on the media")
    p.add_argument("job", type=int, help=JOB)
    p.add_argument("--glob", metavar="GLOB", help="only paths matching this shell pattern")
    p = subcommand(bk, "expire", cmd_expire, "apply retention: expire jobs, recycle media")
    p.add_argument("--dry-run", action="store_true", help="say what would happen, change nothing")
    add_admin_args(p)
    subcommand(bk, "media", cmd_media, "the cartridges backups use: state, jobs, bytes")
    cat = bk.add_parser("catalog", help="the backup catalog").add_subparsers(dest="what", required=True)
    p = subcommand(cat, "rebuild", cmd_rebuild, "rebuild the catalog by reading the job headers on the media")
    p.add_argument("library", help="the tape library to read")
    p.add_argument("--media", nargs="+", metavar="BARCODE", help="only these cartridges (default: all)")
    add_admin_args(p)
    p = subcommand(bk, "report", cmd_report, "completion rate, verify success, restore times")
    p.add_argument("--days", type=int, default=30, help="the daily series' length (default 30)")
    p.add_argument("--plot", metavar="FILE.png",
                   help="also draw the daily figures (needs matplotlib); drills go to FILE-drills.png")
    drill_cmd.register(bk)
    admin_cmd.register_backup_lock(bk)

    au = sub.add_parser("audit", help="the hash-chained audit log of configuration changes").add_subparsers(
        dest="action", required=True)
    subcommand(au, "log", cmd_audit_log, "every recorded change, oldest first")
    subcommand(au, "verify", cmd_audit_verify, "check the chain: edited, inserted or removed entries")
    ky = sub.add_parser("key", help="backup encryption keys").add_subparsers(dest="action", required=True)
    p = subcommand(ky, "rotate", cmd_key_rotate, "a new key id for new jobs; old jobs stay restorable")
    p.add_argument("--every", metavar="DURATION", help="also rotate automatically at this age, like 90d")
    add_admin_args(p)
    subcommand(ky, "list", cmd_key_list, "key ids and when they were made")


def _size(n: int | None) -> str:
    return format_size(n, True) if n else "0"


def cmd_policy_create(args: argparse.Namespace) -> int:
    r = request(pool_path(args), "backup.policy.create", name=args.name, source=args.source, library=args.library,
                media=args.media, schedule=args.schedule, level=args.level, full_every=args.full_every,
                retention=args.retention, encrypt=args.encrypt, freeze=args.freeze, verify=args.verify,
                retries=args.retries, retry_delay=args.retry_delay,
                **{k: v for k in ("pre", "post", "hook_timeout") if (v := getattr(args, k))})
    emit(args, r, lambda p: f"created policy {p['name']}: {p['source']} to {p['library']} "
         f"({len(p['media'])} cartridges), {p['schedule'] or 'by hand'}")
    return 0


def _policy_rows(pols: list[dict]) -> str:
    rows = [("NAME", "SOURCE", "SCHEDULE", "LEVEL", "LIBRARY", "MEDIA", "RETENTION", "NEXT RUN")]
    for p in pols:
        rows.append((p["name"], p["source"], p["schedule"] or "by hand", p["level"], p["library"],
                     str(len(p["media"])), f"{p['retention'] // 86400}d", when(p.get("next_run"))))
    return table(rows) if pols else "no backup policies"


def cmd_policy_list(args: argparse.Namespace) -> int:
    emit(args, request(pool_path(args), "backup.policy.list"), _policy_rows)
    return 0


def cmd_policy_show(args: argparse.Namespace) -> int:
    r = request(pool_path(args), "backup.policy.show", name=args.name)
    emit(args, r, lambda p: _policy_rows([p]) + _hook_lines(p) + "\n\n" + _job_rows(p["jobs"]))
    return 0


def _hook_lines(p: dict) -> str:
    """The policy's pre/post commands, if any (policies made before them have none)."""
    out = [f"\n{k}: {p[k]}" for k in ("pre", "post") if p.get(k)]
    if out:
        out.append(f"\nhook timeout: {p.get('hook_timeout', 60):.0f}s")
    return "".join(out)


def cmd_policy_delete(args: argparse.Namespace) -> int:
    r = request(pool_path(args), "backup.policy.delete", name=args.name)
    emit(args, r, lambda p: f"deleted policy {p['name']}; its jobs stay in the catalog")
    return 0


def _job_rows(jobs: list[dict]) -> str:
    if not jobs:
        return "no jobs"
    rows = [("JOB", "POLICY", "LEVEL", "STATUS", "STARTED", "ENDED", "BYTES", "MEDIA", "VERIFY", "REASON")]
    for j in jobs:
        media = ",".join(dict.fromkeys(p["barcode"] for p in j.get("parts", []))) or "-"
        rows.append((str(j["id"]), j["policy"], j["level"], j["status"], when(j.get("started")),
                     when(j.get("ended")), _size(j.get("bytes")), media, j.get("verify") or "-",
                     j.get("reason") or j.get("verify_reason") or ""))
    return table(rows)


def cmd_run(args: argparse.Namespace) -> int:
    r = request(pool_path(args), "backup.run", progress=args.wait, policy=args.policy, level=args.level,
                wait=args.wait)
    emit(args, r, lambda j: f"job {j['id']} ({j['policy']}, {j['level']}): {j['status']}"
         + (f": {j['reason']}" if j.get("reason") else "")
         + (f", {_size(j.get('bytes'))}, verify {j.get('verify') or '-'}" if j["status"] == "done" else ""))
    return 1 if r["status"] == "failed" else 0


def cmd_jobs(args: argparse.Namespace) -> int:
    emit(args, request(pool_path(args), "backup.jobs", policy=args.policy), _job_rows)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    def text(j: dict) -> str:
        out = [_job_rows([j]), "", f"chain: {' -> '.join(map(str, j.get('chain', []))) or j.get('chain_error')}",
               f"snapshot: {j.get('snapshot') or '-'}   key id: {j.get('key_id') or 'none (not encrypted)'}"]
        rows = [("PART", "CARTRIDGE", "TAPE FILE", "BLOCKS", "BYTES", "SHA256")]
        rows += [(str(p["part"]), p["barcode"], str(p["file"]), f"{p['first_block']}-{p['last_block']}",
                  _size(p["bytes"]), p["sha256"][:16]) for p in j.get("parts", [])]
        vols = [("IMAGE", "SIZE", "DATA", "SHA256")]
        vols += [(v["name"], _size(v["size"]), _size(v["bytes"]), v["sha256"][:16]) for v in j.get("volumes", [])]
        return "\n".join(out) + "\n\n" + table(rows) + "\n\n" + table(vols)
    emit(args, request(pool_path(args), "backup.show", job=args.job), text)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    r = request(pool_path(args), "backup.verify", progress=True, job=args.job)
    emit(args, r, lambda v: f"job {v['job']}: verify {v['verify']}" + "".join(f"\n  {p}" for p in v["problems"]))
    return 0 if r["verify"] == "ok" else 1


def cmd_restore(args: argparse.Namespace) -> int:
    from vstor.errors import UsageError

    if (args.to is None) == (args.to_client is None) or (args.to_client is None) != (args.target is None):
        raise UsageError("give --to, or --to-client with --target")
    extra = {"to_client": args.to_client, "target": args.target, "files": args.files} if args.to_client or \
        args.files else {}
    r = request(pool_path(args), "backup.restore", progress=True, job=args.job, to=args.to, **extra)
    if "files" in r and "volumes" not in r:
        emit(args, r, lambda x: f"restored {x['files']} files of job {x['job']} to {x.get('target') or args.target}: "
             f"{_size(x['bytes'])} ({_size(x['read_bytes'])} read from tape)")
        return 0
    emit(args, r, lambda x: f"restored job {x['job']} (chain {' -> '.join(map(str, x['chain']))}) to "
         f"{', '.join(x['volumes'])}: {_size(x['bytes'])} in {x['seconds']:.1f} s ({x['mb_per_s']} MB/s)")
    return 0


def cmd_files(args: argparse.Namespace) -> int:
    def text(x: dict) -> str:
        rows = [("TYPE", "SIZE", "MODE", "MTIME", "FROM JOB", "OFFSET", "SHA256", "PATH")]
        rows += [(f["type"], _size(f["size"]), f"{f['mode']:04o}", when(f["mtime_ns"] / 1e9), str(f["src_job"]),
                  str(f["data_offset"]), (f["sha256"] or "-")[:16], repr(f["path"])[1:-1]) for f in x["files"]]
        head = f"job {x['job']} ({x['source']}, {x['status']}): {len(x['files'])} files"
        if x["deleted"]:
            head += f", {len(x['deleted'])} deleted since its base"
        return head + "\n" + table(rows)
    emit(args, request(pool_path(args), "backup.files", job=args.job, glob=args.glob), text)
    return 0


def cmd_expire(args: argparse.Namespace) -> int:
    r = request(pool_path(args), "backup.expire", dry_run=args.dry_run)

    def text(x: dict) -> str:
        verb = "would" if x["dry_run"] else "did"
        lines = [f"{verb} expire jobs: {', '.join(map(str, x['expire'])) or 'none'}",
                 f"{verb} recycle: {', '.join(x['recycle']) or 'none'}"]
        lines += [f"kept job {j}: {why}" for j, why in x["kept"]]
        lines += [f"not recycled {b}: {why}" for b, why in x["refused"]]
        return "\n".join(lines)
    emit(args, r, text)
    return 0


def cmd_media(args: argparse.Namespace) -> int:
    def text(ms: list[dict]) -> str:
        rows = [("CARTRIDGE", "LIBRARY", "STATE", "LOCATION", "JOBS", "BYTES", "LAST WRITTEN", "WORM")]
        rows += [(m["barcode"], m["library"], m["state"], m.get("location") or "library", str(m.get("jobs", 0)),
                  _size(m.get("bytes")), when(m.get("last_written")), "yes" if m.get("worm") else "no")
                 for m in ms]
        return table(rows) if ms else "no backup media yet"
    emit(args, request(pool_path(args), "backup.media"), text)
    return 0


def cmd_rebuild(args: argparse.Namespace) -> int:
    r = request(pool_path(args), "backup.catalog.rebuild", progress=True, library=args.library, media=args.media)
    emit(args, r, lambda x: f"read {len(x['cartridges'])} cartridges: {len(x['jobs'])} jobs, {x['parts']} new parts"
         + "".join(f"\n  problem: {p}" for p in x["problems"]))
    return 1 if r["problems"] else 0


def cmd_report(args: argparse.Namespace) -> int:
    from vstor.backup.drill.report import plot_drills, render_drills
    from vstor.backup.rules.report import plot, render_text

    r = request(pool_path(args), "backup.report", days=args.days)
    drill_plot = None
    if args.plot:
        plot(r, args.plot)
        if r.get("drills", {}).get("policies"):
            stem, ext = os.path.splitext(args.plot)
            drill_plot = f"{stem}-drills{ext or '.png'}"
            plot_drills(r["drills"], drill_plot)
    emit(args, r, lambda x: render_text(x) + render_drills(x["drills"])
         + (f"\nplot written to {args.plot}" if args.plot else "")
         + (f"\ndrill plot written to {drill_plot}" if drill_plot else ""))
    return 0


def cmd_audit_log(args: argparse.Namespace) -> int:
    def text(es: list[dict]) -> str:
        rows = [("SEQ", "TIME", "ACTOR", "ACTION", "DETAILS")]
        rows += [(str(e["seq"]), when(e["time"]), e["actor"], e["action"],
                  ", ".join(f"{k}={v if isinstance(v, str) else json.dumps(v)}"
                            for k, v in sorted(e["details"].items()))[:80]) for e in es]
        return table(rows) if es else "the audit log is empty"
    emit(args, request(pool_path(args), "audit.log"), text)
    return 0


def cmd_audit_verify(args: argparse.Namespace) -> int:
    r = request(pool_path(args), "audit.verify")
    emit(args, r, lambda x: (f"intact: {x['entries']} entries, head {x['head'][:16]}" if x["intact"]
                             else "TAMPERED:\n" + "\n".join(f"  {p}" for p in x["problems"])))
    return 0 if r["intact"] else 1


def cmd_key_rotate(args: argparse.Namespace) -> int:
    r = request(pool_path(args), "key.rotate", every=args.every)
    emit(args, r, lambda x: f"new backup key id {x['key_id']}: new jobs use it; older jobs keep theirs"
         + (f"; rotating every {args.every}" if args.every else ""))
    return 0


def cmd_key_list(args: argparse.Namespace) -> int:
    def text(ks: list[dict]) -> str:
        rows = [("KEY ID", "CREATED", "CURRENT")]
        rows += [(str(k["id"]), when(k["created"]), "yes" if k.get("current") else "") for k in ks]
        return table(rows) if ks else "no backup keys yet (the first encrypted job makes one)"
    emit(args, request(pool_path(args), "key.list"), text)
    return 0
