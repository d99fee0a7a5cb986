"""Golden output of the commands people read: what `status`, `array status`, `media show`,
`volume list`, `group list`, `snapshot list` and `backup jobs` print on a real array, compared
with the expected text below after times, pids, paths, uuids and free space are normalised.
Also: sizes round-trip through format_size and parse_size, and a negative size is one error line."""

from __future__ import annotations

import random
import re

import pytest
from harness import one_error_line

from vstor.errors import UsageError
from vstor.units import _UNITS, format_size, parse_size

UNITS = ("K", "M", "G", "T", "P")


# -- sizes -------------------------------------------------------------------------------------
def test_format_size_uses_every_unit_and_round_trips():
    assert [format_size(_UNITS[u]) for u in UNITS] == ["1K", "1M", "1G", "1T", "1P"]
    assert format_size(1536) == "1.5K" and format_size(5 << 40) == "5T" and format_size(3 << 49) == "1.5P"
    assert format_size(0) == "0" and format_size(1023) == "1023" and format_size(1000001) == "1000001"
    assert format_size(1000001, approx=True) == "~976.6K" and format_size(1 << 30, approx=True) == "1G"
    rng = random.Random(27)
    values = [0, 1, 1023, 1024, 1025, (1 << 50) - 1, 1 << 60]
    for u in UNITS:
        unit = _UNITS[u]
        values += [unit, unit * rng.randrange(1, 5000), unit * rng.randrange(1, 400) + unit // 4,
                   unit * rng.randrange(1, 400) + unit // 2 + unit // 4,
                   unit * rng.randrange(1, 99) + rng.randrange(unit)]
    values += [rng.randrange(1 << 52) for _ in range(2000)]
    for x in values:
        text = format_size(x)
        assert parse_size(text) == x, (x, text)
        assert re.fullmatch(r"\d+(\.\d{1,2})?[KMGTP]?", text), text  # what parse_size documents


def test_parse_size_accepts_what_it_documents_and_refuses_the_rest():
    assert parse_size("1P") == 1 << 50 and parse_size("64MiB") == 64 << 20 and parse_size("1.25G") == 5 << 28
    for bad, why in (("-5G", "cannot be negative"), ("1.1K", "not a whole number"), ("5X", "K, M, G, T or P")):
        with pytest.raises(UsageError, match=why):
            parse_size(bad)


def test_negative_size_is_one_error_line(array_factory):
    arr = array_factory()  # offline: no daemon needed to parse the arguments
    for args in (("volume", "create", "v", "--size", "-5G"), ("volume", "resize", "v", "--size", "-5G")):
        line = one_error_line(arr.vstor(*args, check=False), " ".join(args))
        assert line == "vstor: error: invalid size '-5G': a size cannot be negative"


# -- golden text -------------------------------------------------------------------------------
def normalise(text: str, base: str) -> str:
    text = text.replace(base, "BASE")
    text = re.sub(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", "UUID", text)
    text = re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", "YYYY-MM-DD hh:mm:ss", text)  # same width: tables stay aligned
    text = re.sub(r"pid \d+", "pid PID", text)
    text = re.sub(r"up (\d+d )?\d\d:\d\d:\d\d", "up UPYYYY-MM-DD hh:mm:ss", text)
    text = re.sub(r"~?[\d.]+[KMGTP]? free", "FREE free", text)
    text = re.sub(r"the pool's ~?[\d.]+[KMGTP]?", "the pool's CAPACITY", text)
    text = re.sub(r"[\d.]+x the pool's", "RATIOx the pool's", text)
    text = re.sub(r"^(space +)~?[\d.]+[KMGTP]? used", r"\1USED used", text, flags=re.M)
    text = re.sub(r"^journal .*$", "journal   JOURNAL", text, flags=re.M)
    text = re.sub(r"^background gc (collecting|waiting: the host is reading|idle: no segment to clean); defrag "
                  r"[a-z][a-zA-Z :/]*; [\d,]+ chunk extents$", "background BACKGROUND", text, flags=re.M)
    text = re.sub(r"^recovery .*$", lambda m: re.sub(r"in [\d.]+s( \([\d.]+ MB/s\))?", "in SECONDS", m.group(0)),
                  text, flags=re.M)
    return text


ARRAY_STATUS = """\
pool      BASE/a/pool (UUID)
daemon    pid PID, mounted at BASE/a/mnt
settings  chunk 512K, compress none, encrypt off
journal   JOURNAL
space     FREE free in the filesystem under the pool
fuse      max_write 1M, max_read 1M, max_background 64
recovery  replayed 0 records, 0 in SECONDS
background BACKGROUND

NAME  SIZE  ALLOCATED  GROUP  OPEN  IMAGE
v     64M   1M         g      0     BASE/a/mnt/volumes/v
w     1G    0          -      0     BASE/a/mnt/volumes/w"""

VOLUME_LIST = """\
NAME  SIZE  ALLOCATED  GROUP  OPEN  IMAGE
v     64M   1M         g      0     BASE/a/mnt/volumes/v
w     1G    0          -      0     BASE/a/mnt/volumes/w"""

GROUP_LIST = """\
NAME  VOLUMES  SNAPSHOTS  SEQ  POLICY
g     v        1          0    -"""

SNAPSHOT_LIST = """\
OWNER  NAME  CREATED              SEQ  VOLUMES  EXCLUSIVE  SHARED
g      s1    YYYY-MM-DD hh:mm:ss  0    v        0          1M"""

MEDIA_SHOW = """\
barcode      VT0001L9
kind         LTO9
element      slot1
capacity     64M
used         USED
partitions   1
files        FILES
blocks       BLOCKS
eod          EOD
protect      off
worm         no
cleaning     no
encrypted    no
cut_at_load  no
loads        3"""

BACKUP_JOBS = """\
JOB  POLICY  LEVEL  STATUS  STARTED              ENDED                BYTES  MEDIA     VERIFY  REASON
1    p       full   done    YYYY-MM-DD hh:mm:ss  YYYY-MM-DD hh:mm:ss  1M     VT0001L9  ok"""

STATUS = """\
pool       BASE/a/pool (UUID)
daemon     running, pid PID, up UPYYYY-MM-DD hh:mm:ss, mounted at BASE/a/mnt
space      USED used, FREE free, 1088M provisioned in volumes: RATIOx the pool's CAPACITY
last check none recorded
backup     last: job 1 p full done YYYY-MM-DD hh:mm:ss; next: none

VOLUME  SIZE  ALLOCATED  GROUP  OPEN
v       64M   1M         g      0
w       1G    0          -      0

GROUP  VOLUMES  SNAPSHOTS  LAST SNAPSHOT
g      v        1          s1 (YYYY-MM-DD hh:mm:ss)

LIBRARY  TYPE  DRIVES  LOADED
lib      tape  1       -

warnings   none"""

STOPPED_STATUS = """\
pool       BASE/a/pool (UUID)
daemon     stopped; last run pid PID started YYYY-MM-DD hh:mm:ss, stopped cleanly YYYY-MM-DD hh:mm:ss
space      USED used, FREE free, 1088M provisioned in volumes: RATIOx the pool's CAPACITY
last check YYYY-MM-DD hh:mm:ss: clean
checkpoint generation GEN (volumes and groups below are as of it)

VOLUME  SIZE  ALLOCATED  GROUP  OPEN
v       64M   -          g      -
w       1G    -          -      -

GROUP  VOLUMES  SNAPSHOTS  LAST SNAPSHOT
g      v        1          s1 (YYYY-MM-DD hh:mm:ss)

warnings   none"""



def _media(text: str) -> str:
    for field in ("used", "files", "blocks", "eod"):
        text = re.sub(rf"^({field} +)\S+$", rf"\g<1>{field.upper()}", text, flags=re.M)
    return text


@pytest.mark.root
def test_golden_output_of_a_running_and_a_stopped_array(array, tmp_path):
    arr = array
    base = str(tmp_path)
    arr.create("v", "64M")
    arr.create("w", "1G")
    with open(arr.image("v"), "r+b") as f:
        f.write(b"\x5a" * (1 << 20))
    arr.vstor("group", "create", "g", "--volumes", "v")
    arr.vstor("snapshot", "create", "g", "--name", "s1")
    arr.vstor("library", "create", "lib", "--type", "tape", "--slots", "4", "--drives", "1")
    arr.vstor("media", "create", "lib", "VT0001L9", "--capacity", "64M")
    arr.vstor("backup", "policy", "create", "p", "--source", "v", "--library", "lib", "--media", "VT0001L9")
    arr.vstor("backup", "run", "p", "--wait")

    def out(*args: str) -> str:
        return normalise(arr.vstor(*args).stdout.rstrip("\n"), base)

    got = {
        "array status": out("array", "status"),
        "volume list": out("volume", "list"),
        "group list": out("group", "list"),
        "snapshot list": re.sub(r"^(g +)\S+ \(auto\).*\n?", "", out("snapshot", "list", "g"), flags=re.M),
        "media show": _media(out("media", "show", "lib", "VT0001L9")),
        "backup jobs": out("backup", "jobs"),
        "status": out("status"),
    }
    want = {"array status": ARRAY_STATUS, "volume list": VOLUME_LIST, "group list": GROUP_LIST,
            "snapshot list": SNAPSHOT_LIST, "media show": MEDIA_SHOW, "backup jobs": BACKUP_JOBS,
            "status": STATUS}
    wrong = [f"{name}:\n{got[name]}" for name, text in want.items() if got[name] != text]
    assert not wrong, "\n\n".join(wrong)
    assert '"group_name": "g"' in arr.vstor("volume", "list", "--json").stdout  # raw fields stay in --json

    arr.stop()
    arr.vstor("pool", "check", arr.pool)
    stopped = re.sub(r"generation \d+", "generation GEN", out("status"))
    assert stopped == STOPPED_STATUS, stopped
    st = arr.vstor_json("status")
    assert st["running"] is False and st["last_check"]["clean"] is True and st["last_run"]["clean"] is True
    assert [v["size"] for v in st["volumes"]] == [64 << 20, 1 << 30]


@pytest.mark.root
def test_stopped_status_after_kill9_says_the_run_did_not_stop_cleanly(array):
    array.create("v", "16M")
    array.kill9()
    text = array.vstor("status").stdout
    assert "did NOT stop cleanly (killed or crashed)" in text, text
    st = array.vstor_json("status")
    assert st["running"] is False and st["last_run"]["clean"] is False
    assert any("did not stop cleanly" in w for w in st["warnings"]), st["warnings"]
    array.start()  # the journal is replayed; the next clean stop is reported as such
    array.stop()
    assert array.vstor_json("status")["last_run"]["clean"] is True


def test_the_text_stats_file_prints_no_python_reprs():
    from vstor.fuse.ops import plain

    assert plain({"4K": 3, "1M": 1}) == "4K=3 1M=1"
    assert plain({"count": 2, "p50": None}) == "count=2 p50=-"
    assert (plain(False), plain(True), plain([1, 64]), plain([])) == ("no", "yes", "1,64", "-")
    assert plain({"a": {"b": [1, 2]}}) == "a=b=1,2"


def test_status_background_line_says_what_gc_and_defrag_do():
    from vstor.cli.array_cmd import _background_line

    s = {"gc": {"state": "waiting: the host is reading"}, "fragment_extents": 150794,
         "defrag": {"enabled": True, "state": "sweeping"}}
    assert _background_line(s) == ("background gc waiting: the host is reading; defrag sweeping; "
                                   "150,794 chunk extents")
    s["defrag"]["enabled"] = False
    assert _background_line(s).endswith("defrag off; 150,794 chunk extents")
