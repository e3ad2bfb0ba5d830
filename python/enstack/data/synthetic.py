"""Synthetic C functions for the five VDISC classes, with safe look-alikes: the embedded demo data.

What it is: a seeded generator (``random.Random``; the same seed gives the same functions on
every platform) of realistic-looking C functions for CWE-119 (out-of-bounds writes through
unchecked indices and loop bounds, off-by-one ``<=``), CWE-120 (``strcpy``/``strcat``/``memcpy``/
``sprintf``/``gets`` of tainted lengths), CWE-469 (pointer subtraction across different
objects), CWE-476 (NULL dereference after ``malloc``/``fopen``/lookups/``strchr``/``getenv``)
and CWE-other (format strings, integer truncation and overflow in sizes, uninitialised values,
double free, use after free). Each shape has a safe twin that differs only where it matters
(the bound, the check, ``snprintf``, ``fgets``, the right base pointer). Identifiers, types,
sizes, helper calls, comments, indentation (tabs or spaces), brace style and the amount of
surrounding everyday code (logging, retries, switch statements, parsing loops) vary, so
lengths run from a few lines to well past 512 tokens.

What it is for: the demo (``configs/demo.yaml``), tests and benchmarks of the whole path,
without a download; ``write_vdisc_hdf5`` writes the Draper VDISC layout, so they go through the
real ingestion code.

What it is not: a benchmark. The shapes are few and written by us, so a model that scores well
here has learned these templates, not real-world vulnerability detection. Report accuracy on
VDISC (or Juliet for a real-code sanity check), never on this data.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import re
from string import Template
from typing import Dict, List, Union

from enstack._C import ConfigError, DataError
from enstack.config.schema import ENSTACK5_LABELS
from enstack.files import atomic_write

__all__ = ["CLASSES", "generate", "make_function", "write_jsonl", "write_vdisc_hdf5"]

CLASSES = list(ENSTACK5_LABELS)

# Templates: first line is the signature, the rest the body (4-space indent, K&R braces).
# "@<vulnerable@|safe@>" marks where the twins differ; $name placeholders are filled per function.
_SHAPES: Dict[str, List[str]] = {
    "CWE-119": [
        r"""int $fn(const $T *$src, $LT $len)
$T $buf[$N];
$LT $i;
@<if ($len == 0) {@|if ($len == 0 || $len > sizeof($buf) / sizeof($buf[0])) {@>
    return 0;
}
for ($i = 0; $i < $len; $i++) {
    $buf[$i] = $src[$i];
}
return $sink($buf, $len);""",
        r"""void $fn(int $slot, int $val)
static int $arr[$N];
@<if ($slot < 0) {@|if ($slot < 0 || $slot >= $N) {@>
    return;
}
$arr[$slot] += $val;
$log("slot %d is now %d", $slot, $arr[$slot]);""",
        r"""void $fn(struct $S *$ctx)
int $i;
for ($i = 0; $i @<<=@|<@> $N; $i++) {
    $ctx->$arr[$i] = 0;
}
$ctx->$len = 0;""",
        r"""int *$fn(const int *$src, size_t $len)
int *$p;
size_t $i;
$p = malloc($len * sizeof(*$p));
if ($p == NULL) {
    return NULL;
}
for ($i = 0; $i @<<=@|<@> $len; $i++) {
    $p[$i] = $src[$i] * 2;
}
return $p;""",
        r"""int $fn(FILE *$fp)
char $buf[$N];
size_t $len = 0;
int $c;
while (($c = fgetc($fp)) != EOF && $c != '\n'@<@| && $len < sizeof($buf) - 1@>) {
    $buf[$len++] = (char)$c;
}
$buf[$len] = '\0';
return $sink($buf, $len);""",
    ],
    "CWE-120": [
        r"""int $fn(const char *$src)
char $buf[$N];
@<strcpy($buf, $src);@|strncpy($buf, $src, sizeof($buf) - 1);
$buf[sizeof($buf) - 1] = '\0';@>
return $sink($buf, strlen($buf));""",
        r"""int $fn(const char *$dir, const char *$src)
char $path[$N];
@<@|if (strlen($dir) + strlen($src) + 2 > sizeof($path)) {
    return -1;
}@>
strcpy($path, $dir);
strcat($path, "/");
strcat($path, $src);
return $sink($path, strlen($path));""",
        r"""int $fn(int $fd)
unsigned char $hdr[4];
char $buf[$N];
size_t $len;
if (recv($fd, $hdr, sizeof($hdr), 0) != sizeof($hdr)) {
    return -1;
}
$len = ((size_t)$hdr[2] << 8) | $hdr[3];
@<@|if ($len > sizeof($buf)) {
    $log("%s: frame too long (%zu)", __func__, $len);
    return -1;
}@>
if (recv($fd, $buf, $len, MSG_WAITALL) < 0) {
    return -1;
}
return $sink($buf, $len);""",
        r"""void $fn(const char *$user, const char *$host)
char $msg[$N];
@<sprintf($msg, "login from %s at %s", $user, $host);@|snprintf($msg, sizeof($msg), "login from %s at %s", $user, $host);@>
$log("%s", $msg);""",
        r"""int $fn(void)
char $buf[$N];
@<if (gets($buf) == NULL) {@|if (fgets($buf, sizeof($buf), stdin) == NULL) {@>
    return -1;
}
$buf[strcspn($buf, "\n")] = '\0';
return $sink($buf, strlen($buf));""",
        r"""int $fn(char **$argv, const char *$src)
char $buf[$N];
int $len = atoi($argv[1]);
@<if ($len <= 0) {@|if ($len <= 0 || $len > (int)sizeof($buf)) {@>
    return -1;
}
memcpy($buf, $src, $len);
return $sink($buf, $len);""",
    ],
    "CWE-469": [
        r"""int $fn(const char *$src, const char *$src2, char $c)
const char *$p = strchr($src, $c);
if ($p == NULL) {
    return -1;
}
return (int)($p - @<$src2@|$src@>);""",
        r"""int $fn(int $val)
int $arr[$N];
int $arr2[$N];
int *$p = $arr;
$fill($arr, $N);
$fill($arr2, $N);
while ($p < $arr + $N && *$p != $val) {
    $p++;
}
return (int)($p - @<$arr2@|$arr@>);""",
        r"""size_t $fn(struct $S *$ctx, struct $S *$ctx2)
char *$base = (char *)@<$ctx2@|$ctx@>;
char *$p = (char *)&$ctx->$field;
return (size_t)($p - $base);""",
        r"""size_t $fn(char *$buf, size_t $len, const char *$src)
char *$start = $buf;
const char *$p = $src;
char *$end = $buf + $len - 1;
while (*$p != '\0' && $buf < $end) {
    *$buf++ = *$p++;
}
*$buf = '\0';
return (size_t)($buf - @<$src@|$start@>);""",
    ],
    "CWE-476": [
        r"""char *$fn(const char *$src, size_t $len)
char *$p = malloc($len + 1);
@<@|if ($p == NULL) {
    return NULL;
}@>
memcpy($p, $src, $len);
$p[$len] = '\0';
return $p;""",
        r"""int $fn(const char *$path)
char $buf[$N];
FILE *$fp = fopen($path, "r");
int $ret = 0;
@<@|if ($fp == NULL) {
    $log("cannot open %s", $path);
    return -1;
}@>
while (fgets($buf, sizeof($buf), $fp) != NULL) {
    $ret += $sink($buf, strlen($buf));
}
fclose($fp);
return $ret;""",
        r"""int $fn(struct $S *$ctx, int $slot)
struct $E *$p = $lookup($ctx, $slot);
@<@|if ($p == NULL) {
    return -1;
}@>
$p->$field++;
return $p->$field;""",
        r"""int $fn(char *$buf)
char *$p = strchr($buf, '=');
@<@|if ($p == NULL) {
    return -1;
}@>
*$p = '\0';
return $setter($buf, $p + 1);""",
        r"""char *$fn(const char *$src)
const char *$dir = getenv("$ENV");
char *$p;
@<@|if ($dir == NULL) {
    return NULL;
}@>
$p = malloc(strlen($dir) + strlen($src) + 2);
if ($p == NULL) {
    return NULL;
}
sprintf($p, "%s/%s", $dir, $src);
return $p;""",
    ],
    "CWE-other": [
        r"""void $fn(const char *$msg)
@<${pf}$msg);@|${pf}"%s", $msg);@>
fflush(stdout);""",
        r"""struct $E *$fn(const unsigned char *$src)
unsigned int $len = ($src[0] << 24) | ($src[1] << 16) | ($src[2] << 8) | $src[3];
struct $E *$p;
@<@|if ($len == 0 || $len > SIZE_MAX / sizeof(*$p)) {
    return NULL;
}@>
$p = malloc($len * sizeof(*$p));
if ($p == NULL) {
    return NULL;
}
memset($p, 0, $len * sizeof(*$p));
return $p;""",
        r"""char *$fn(const char *$src)
@<unsigned short@|size_t@> $len = strlen($src);
char *$p = malloc($len + 1);
if ($p == NULL) {
    return NULL;
}
memcpy($p, $src, @<strlen($src)@|$len@> + 1);
return $p;""",
        r"""int $fn(int $mode)
int $ret@<@| = -1@>;
switch ($mode) {
case 0:
    $ret = $sink(NULL, 0);
    break;
case 1:
    $ret = 1;
    break;
}
return $ret;""",
        r"""int $fn(const char *$src, size_t $len)
char *$p = malloc($len);
int $ret = 0;
if ($p == NULL) {
    return -1;
}
memcpy($p, $src, $len);
if ($sink($p, $len) < 0) {
    free($p);
    @<$ret = -1;@|return -1;@>
}
free($p);
return $ret;""",
        r"""void $fn(struct $S *$ctx)
struct $E *$p = $ctx->$head;
while ($p != NULL) {
    @<free($p);
    $p = $p->next;@|struct $E *$p2 = $p->next;
    free($p);
    $p = $p2;@>
}
$ctx->$head = NULL;""",
    ],
}

# Everyday code around the core, the same for both twins and all classes (all of it safe).
_PADDING = [
    r"""$log("%s: enter", __func__);""",
    r"""if (g_state == STATE_CLOSED) {
    $log("%s: called after shutdown", __func__);
    $fail
}""",
    r"""g_stats.calls++;
g_stats.last_call = time(NULL);""",
    r"""{
    int $k, $allow = 0, $deny = 0;
    for ($k = 0; $k < g_config.num_rules && $k < MAX_RULES; $k++) {
        switch (g_config.rules[$k].kind) {
        case RULE_ALLOW:
            $allow++;
            break;
        case RULE_DENY:
            $deny++;
            break;
        case RULE_LOG:
            $log("rule %d: %s", $k, g_config.rules[$k].name);
            break;
        default:
            break;
        }
    }
    if ($deny > $allow) {
        $log("%d deny rules outweigh %d allow rules", $deny, $allow);
    }
}""",
    r"""int $tries = 0;
while (!device_ready() && $tries < MAX_RETRIES) {
    usleep(1000 * ($tries + 1));
    $tries++;
}
if ($tries == MAX_RETRIES) {
    $log("device not ready after %d tries", $tries);
    $fail
}""",
    r"""if (strncmp(g_config.mode, "fast", 4) == 0) {
    g_flags |= MODE_FAST;
} else if (strncmp(g_config.mode, "strict", 6) == 0) {
    g_flags |= MODE_STRICT;
} else {
    g_flags &= ~(MODE_FAST | MODE_STRICT);
}""",
    r"""pthread_mutex_lock(&g_lock);
g_stats.pending--;
if (g_stats.pending < 0) {
    g_stats.pending = 0;
}
pthread_mutex_unlock(&g_lock);""",
    r"""{
    size_t $k = strnlen(g_config.name, sizeof(g_config.name));
    while ($k > 0 && isspace((unsigned char)g_config.name[$k - 1])) {
        g_config.name[--$k] = '\0';
    }
}""",
    r"""switch (g_state) {
case STATE_IDLE:
    g_state = STATE_BUSY;
    break;
case STATE_BUSY:
    $log("%s: busy", __func__);
    $fail
case STATE_CLOSED:
    $fail
default:
    break;
}""",
    r"""{
    unsigned int $crc = 0xffffffffu;
    const unsigned char *$q = (const unsigned char *)g_config.name;
    while (*$q != '\0') {
        $crc = ($crc >> 8) ^ crc_table[($crc ^ *$q++) & 0xffu];
    }
    g_config.name_crc = ~$crc;
}""",
    r"""struct timeval $tv;
if (gettimeofday(&$tv, NULL) == 0) {
    g_stats.last_sec = $tv.tv_sec;
    g_stats.last_usec = $tv.tv_usec;
}""",
    r"""{
    char $tmp[128];
    char *$save = NULL;
    char *$tok;
    snprintf($tmp, sizeof($tmp), "%s", g_config.options);
    for ($tok = strtok_r($tmp, ",", &$save); $tok != NULL; $tok = strtok_r(NULL, ",", &$save)) {
        if (strcmp($tok, "verbose") == 0) {
            g_flags |= FLAG_VERBOSE;
        } else if (strcmp($tok, "quiet") == 0) {
            g_flags &= ~FLAG_VERBOSE;
        } else if (strncmp($tok, "level=", 6) == 0) {
            long $lvl = strtol($tok + 6, NULL, 10);
            if ($lvl >= 0 && $lvl <= 9) {
                g_config.level = (int)$lvl;
            }
        } else {
            $log("ignoring option '%s'", $tok);
        }
    }
}""",
    r"""if (g_flags & FLAG_VERBOSE) {
    char $line[3 * 16 + 1] = "";
    size_t $k;
    for ($k = 0; $k < sizeof(g_config.key) && $k < 16; $k++) {
        snprintf($line + 3 * $k, sizeof($line) - 3 * $k, "%02x ", g_config.key[$k]);
    }
    $log("key: %s", $line);
}""",
    r"""{
    long $ms = g_config.timeout_ms;
    if ($ms <= 0) {
        $ms = DEFAULT_TIMEOUT_MS;
    } else if ($ms > MAX_TIMEOUT_MS) {
        $log("timeout %ld ms too large, clamping", $ms);
        $ms = MAX_TIMEOUT_MS;
    }
    g_timeout.tv_sec = $ms / 1000;
    g_timeout.tv_nsec = ($ms % 1000) * 1000000L;
}""",
    r"""{
    size_t $k, $cnt = 0;
    for ($k = 0; $k < g_input.len; $k++) {
        if (g_input.data[$k] == '\n') {
            $cnt++;
        }
    }
    g_stats.lines += $cnt;
}""",
    r"""if (errno == EINTR || errno == EAGAIN) {
    $log("%s: interrupted, will retry", __func__);
    errno = 0;
} else if (errno != 0) {
    $log("%s: %s", __func__, strerror(errno));
    $fail
}""",
    r"""{
    const struct $E *$q = g_list.head;
    int $cnt = 0;
    while ($q != NULL) {
        if ($q->flags & ENTRY_STALE) {
            $cnt++;
        }
        $q = $q->next;
    }
    if ($cnt > 0) {
        $log("%d stale entries", $cnt);
    }
}""",
    r"""{
    unsigned int $slot = (unsigned int)(g_stats.last_size / 64);
    if ($slot >= HIST_BUCKETS) {
        $slot = HIST_BUCKETS - 1;
    }
    g_stats.hist[$slot]++;
}""",
    r"""{
    int $k;
    for ($k = 0; $k < NUM_HOOKS; $k++) {
        if (g_hooks[$k] != NULL && g_hooks[$k]->enabled) {
            g_hooks[$k]->notify(g_hooks[$k], EVENT_ENTER);
        }
    }
}""",
]

_POOLS = {
    "buf": ["buf", "buffer", "tmp", "local", "out", "dst", "scratch", "work", "line", "name"],
    "src": ["src", "input", "data", "arg", "str", "value", "text", "payload", "key", "label"],
    "len": ["len", "n", "size", "count", "nbytes", "length", "sz", "want", "total", "avail"],
    "i": ["i", "j", "idx", "pos", "off", "x"], "k": ["k", "m", "r", "t", "w"],
    "p": ["p", "ptr", "item", "node", "obj", "rec", "cur", "ent", "elem", "res"],
    "fd": ["fd", "sock", "s", "cfd", "client"], "fp": ["fp", "f", "file", "stream", "in"],
    "arr": ["table", "slots", "vals", "counts", "hist", "map", "cells", "levels"],
    "ret": ["ret", "rc", "err", "status", "result", "total"], "c": ["c", "ch", "sep", "delim"],
    "slot": ["slot", "index", "which", "id", "bucket"], "val": ["val", "value", "delta", "v", "amount"],
    "ctx": ["ctx", "conn", "sess", "st", "dev", "req", "self"], "msg": ["msg", "fmt", "banner", "reply"],
    "hdr": ["hdr", "head", "prefix", "lenbuf"], "argv": ["argv", "args", "fields", "tok", "parts"],
    "path": ["path", "full", "fname", "dest"], "dir": ["dir", "base", "root", "home", "prefix"],
    "user": ["user", "login", "who", "account"], "host": ["host", "peer", "addr", "remote"],
    "start": ["start", "begin", "orig", "first"], "end": ["end", "limit", "last", "stop"],
    "base": ["base", "origin", "anchor"], "mode": ["mode", "kind", "op", "cmd", "type"],
    "cnt": ["hits", "stale", "found", "nlines"], "allow": ["allowed", "nallow", "n_ok"],
    "deny": ["denied", "ndeny", "n_bad"], "tries": ["tries", "attempt", "retries"],
    "crc": ["crc", "sum", "hash", "h"], "tmp": ["opts", "copy", "work", "spec"], "save": ["save", "saveptr", "state"],
    "tok": ["tok", "opt", "word", "part"], "lvl": ["lvl", "level", "num"], "ms": ["ms", "timeout", "msec", "wait_ms"],
    "line": ["line", "hex", "dump", "text"], "q": ["q", "s", "c", "cp"], "tv": ["tv", "now", "ts"],
}
_CHOICES = {
    "N": ["16", "32", "64", "80", "128", "256", "512", "1024", "BUF_SIZE", "MAX_NAME", "LINE_LEN", "PATH_LEN"],
    "T": ["char", "unsigned char", "uint8_t", "int", "short"], "LT": ["size_t", "unsigned int", "int", "unsigned"],
    "S": ["conn", "session", "request", "device", "parser", "client", "server", "context"],
    "E": ["entry", "item", "node", "record", "slot", "elem"], "head": ["head", "first", "items", "list"],
    "field": ["count", "refs", "hits", "flags", "state", "used"],
    "log": ["log_debug", "log_info", "debug", "LOG", "trace", "dbg_printf"],
    "sink": ["send_reply", "process_block", "emit", "write_out", "handle_data", "consume", "queue_push"],
    "lookup": ["find_entry", "hash_lookup", "list_find", "table_get", "cache_lookup"],
    "setter": ["set_option", "config_set", "env_put", "store_pair"], "ENV": ["HOME", "TMPDIR", "USER", "APP_CONFIG"],
    "fill": ["load_values", "init_table", "read_samples", "fill_defaults"],
    "pf": ["printf(", "fprintf(stderr, ", "syslog(LOG_INFO, ", "fprintf(g_log, "],
}
_MODULES = ["net", "cfg", "http", "db", "usb", "img", "xml", "auth", "pkt", "fs", "tty", "snd", "ipc"]
_VERBS = ["parse", "read", "load", "copy", "handle", "process", "decode", "build", "format", "update",
          "fill", "scan", "fetch", "store", "append", "emit", "reset", "lookup", "find", "init"]
_NOUNS = ["header", "packet", "record", "config", "entry", "message", "token", "path", "name", "field",
          "request", "user", "frame", "line", "chunk", "key", "option", "reply", "table", "list"]
_COMMENTS = ["fast path", "see RFC 1035, section 4.1", "keep in sync with the header", "called with the lock held",
             "XXX: revisit once the new parser lands", "statistics for the admin page", "legacy behaviour",
             "the caller owns the result", "TODO: make this configurable", "hot path, keep it simple"]
_ALT = re.compile(r"@<(.*?)@\|(.*?)@>", re.DOTALL)
_PLACE = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)")
_EMPTY = "\x00"


class _Namer:
    """Fills placeholders: each distinct one gets a distinct name, fixed for the whole function."""

    def __init__(self, rng: random.Random) -> None:
        self.rng, self.used, self.fixed = rng, set(), {k: rng.choice(v) for k, v in _CHOICES.items()}

    def fill(self, text: str, fail: str) -> Dict[str, str]:
        names: Dict[str, str] = {"fail": fail, "fn": ""}
        for key in dict.fromkeys(_PLACE.findall(text)):
            if key in names:
                continue
            names[key] = self.fixed.get(key) or self._fresh(_POOLS[key.rstrip("0123456789")])
        return names

    def _fresh(self, pool: List[str]) -> str:
        name = self.rng.choice(pool)
        if self.rng.random() < 0.25:
            name += self.rng.choice(["", "_"]) + str(self.rng.randint(0, 9))
        while name in self.used:
            name += str(self.rng.randint(0, 9))
        self.used.add(name)
        return name

    def function_name(self) -> str:
        verb, noun = self.rng.choice(_VERBS), self.rng.choice(_NOUNS)
        style = self.rng.random()
        if style < 0.5:
            return f"{self.rng.choice(_MODULES)}_{verb}_{noun}"
        return f"{verb}{noun.capitalize()}" if style < 0.7 else f"{verb}_{noun}"


def _render(template: str, names: Dict[str, str], vulnerable: bool) -> List[str]:
    text = _ALT.sub(lambda m: (m.group(1) if vulnerable else m.group(2)) or _EMPTY, template)
    text = Template(text).substitute(names)
    return [line.replace(_EMPTY, "") for line in text.split("\n") if line.strip() != _EMPTY]


def _fail_of(signature: str) -> str:
    ret = signature.split("$fn")[0]
    return "return NULL;" if "*" in ret else "return;" if "void" in ret else \
        "return 0;" if "size_t" in ret else "return -1;"


def _restyle(lines: List[str], indent: str, allman: bool) -> List[str]:
    out = []
    for line in lines:
        depth = (len(line) - len(line.lstrip(" "))) // 4
        body = line.strip()
        pad = indent * depth
        if allman and body.endswith("{") and not body.endswith("= {") and body != "{":
            head = body[:-1].rstrip()
            if head.startswith("} "):
                out.append(pad + "}")
                head = head[2:]
            out += [pad + head, pad + "{"] if head else [pad + "{"]
        else:
            out.append(pad + body if body else "")
    return out


def make_function(cwe: str, vulnerable: bool, seed: int) -> str:
    """One function of class ``cwe``; for a seed, the two twins differ only in the flaw."""
    if cwe not in _SHAPES:
        raise ConfigError(f"unknown class '{cwe}'; use one of {', '.join(CLASSES)}.")
    rng = random.Random(seed)
    namer = _Namer(rng)
    signature, body = rng.choice(_SHAPES[cwe]).split("\n", 1)
    fail = _fail_of(signature)
    names = namer.fill(signature + body, fail)
    names["fn"] = namer.function_name()
    core = _render(body, names, vulnerable)
    blocks = min(int(rng.lognormvariate(0.4, 1.1)), len(_PADDING))
    before = rng.randint(0, blocks)
    pads = []
    for template in rng.sample(_PADDING, blocks):  # without replacement: no repeated blocks
        pad = _render(template, namer.fill(template, fail), True)
        if rng.random() < 0.2:
            pad.insert(0, _comment(rng))
        pads.append(pad)
    tail = [core.pop()] if core[-1].startswith("return") else []
    lines = [l for p in pads[:before] for l in p] + core + [l for p in pads[before:] for l in p] + tail
    return _assemble(rng, Template(signature).substitute(names), lines)


def _comment(rng: random.Random) -> str:
    text = rng.choice(_COMMENTS)
    return f"/* {text} */" if rng.random() < 0.6 else f"// {text}"


def _assemble(rng: random.Random, signature: str, body: List[str]) -> str:
    indent = rng.choice(["    ", "    ", "\t", "  ", "        "])
    allman = rng.random() < 0.3
    head = [f"/* {rng.choice(_VERBS).capitalize()} the {rng.choice(_NOUNS)}. */"] if rng.random() < 0.3 else []
    if rng.random() < 0.3:
        signature = "static " + signature
    opening = [signature, "{"] if rng.random() < 0.8 else [signature + " {"]
    inner = _restyle(["    " + line if line else line for line in body], indent, allman)
    return "\n".join(head + opening + inner + ["}"])


def generate(n: int, *, seed: int = 0, vulnerable_share: float = 1.0) -> List[Dict[str, Union[str, bool]]]:
    """``n`` functions, classes balanced (to one row), in a seeded order.

    Each is ``{"id", "cwe", "vulnerable", "label", "func"}``; ``label`` is the class for
    vulnerable functions and ``"safe"`` for look-alikes (``cwe`` then names the shape).
    """
    if not 0.0 <= vulnerable_share <= 1.0 or n < 0:
        raise ConfigError(f"generate(n={n}, vulnerable_share={vulnerable_share}): n must be >= 0 and "
                          "vulnerable_share between 0 and 1.")
    rng = random.Random(seed)
    n_vul = round(n * vulnerable_share)
    plan = [(CLASSES[i % 5], True) for i in range(n_vul)] + [(CLASSES[i % 5], False) for i in range(n - n_vul)]
    rng.shuffle(plan)
    rows = []
    for i, (cwe, vul) in enumerate(plan):
        func = make_function(cwe, vul, rng.getrandbits(64))
        rows.append({"id": f"syn{seed}-{i:06d}", "cwe": cwe, "vulnerable": vul,
                     "label": cwe if vul else "safe", "func": func})
    return rows


def write_jsonl(path: Union[str, "os.PathLike[str]"], n: int, seed: int = 0, *,
                vulnerable_share: float = 1.0) -> str:
    """Writes ``generate(n, ...)`` as JSONL (gzipped when the path ends in .gz); returns the path.

    The file is written beside ``path`` and renamed into place, so a kill or a full disk leaves
    no truncated file for a later run to reuse.
    """
    path = os.fspath(path)
    rows = generate(n, seed=seed, vulnerable_share=vulnerable_share)

    def write(f) -> None:
        if not path.endswith(".gz"):
            _write_rows(f, rows)
            return
        # mtime=0: the same rows give the same bytes, so a recorded hash stays valid. Closing
        # the GzipFile writes its trailer and leaves f open for atomic_write's fsync.
        with gzip.GzipFile(filename=path, fileobj=f, mode="wb", mtime=0) as gz:
            _write_rows(gz, rows)

    atomic_write(path, write)
    return path


def _write_rows(f, rows) -> None:
    for row in rows:
        f.write((json.dumps(row) + "\n").encode("utf-8"))


def write_vdisc_hdf5(path: Union[str, "os.PathLike[str]"], n: int, seed: int = 0, *,
                     vulnerable_share: float = 1.0) -> str:
    """Writes ``generate(n, ...)`` in the Draper VDISC layout (``functionSource`` + 5 bool datasets),
    through a temporary sibling renamed into place as ``write_jsonl`` does."""
    try:
        import h5py
        import numpy as np
    except ImportError as e:
        raise DataError("writing HDF5 needs h5py: `pip install h5py`.") from e
    rows = generate(n, seed=seed, vulnerable_share=vulnerable_share)
    path = os.fspath(path)

    def write(f) -> None:
        with h5py.File(f, "w") as h5:
            h5.create_dataset("functionSource", data=[r["func"] for r in rows], dtype=h5py.string_dtype("utf-8"))
            for cwe in CLASSES:
                flags = np.array([r["vulnerable"] and r["cwe"] == cwe for r in rows], dtype=bool)
                h5.create_dataset(cwe, data=flags)

    atomic_write(path, write)
    return path
