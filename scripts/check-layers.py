#!/usr/bin/env python3
"""The layering rules of docs/architecture.md ("Allowed dependencies"), checked.

Crate level, from `cargo metadata` (what a crate may pull in, directly or through others):
  - raftlog-core: no RocksDB, no gRPC (tonic, prost, raftlog-proto), no axum, no store or node;
  - raftlog-store: no gRPC, no axum, no node;
  - raftlog-client, raftlog-cli, raftlog-jepsen, raftlog-testkit: never raftlog-node, -core or
    -store (they reach a cluster only as a user does), dev-dependencies included.
Cargo already refuses cycles between crates.

Module level, from the source (what Cargo cannot see inside a crate):
  - no import cycle between modules of raftlog-node, raftlog-core or raftlog-store: modules that
    are not nested in one another are lifted to the children of their closest common ancestor,
    and those must form no cycle (a module and its own submodules are one unit);
  - in raftlog-node, each top-level module has a layer (LAYERS below) and uses only modules of
    its own layer or below: raft/ never group, api, admin or server; group/ never api, admin or
    server;
  - group/ never names tonic; in api/ only error.rs builds a tonic::Status; core and store name
    neither tonic nor prost nor raftlog_proto (core not RocksDB or tokio::net either);
  - no function of more than FUNCTION_LINES_MAX code lines (blank and comment lines not counted)
    without a `// Long: <why>` comment right above it (or among its doc comments).

Test code (`#[cfg(test)]` items) is left out of the module rules. The parser is deliberately
small: it reads `use` trees and `crate::`/`super::`/`self::` paths, follows `pub use` re-exports,
and strips comments and string literals first. Exit status 1 on any violation, each printed with
its file and line.
"""

import json
import os
import re
import subprocess
import sys

ROOT = os.environ.get("CHECK_LAYERS_ROOT") or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Crate -> packages it must not depend on, through normal dependencies (transitively).
FORBIDDEN_CRATE_DEPS = {
    "raftlog-core": {"rocksdb", "librocksdb-sys", "tonic", "prost", "raftlog-proto", "axum",
                     "raftlog-store", "raftlog-node"},
    "raftlog-store": {"tonic", "prost", "raftlog-proto", "axum", "raftlog-node"},
}
# Crates that must not depend on these, through any kind of dependency (dev included).
USER_SIDE_CRATES = {"raftlog-client", "raftlog-cli", "raftlog-jepsen", "raftlog-testkit"}
NODE_SIDE_CRATES = {"raftlog-node", "raftlog-core", "raftlog-store"}

# The library sources whose modules are checked: crate name -> src dir.
CRATE_SOURCES = {
    "raftlog-core": "node/core/src",
    "raftlog-store": "node/store/src",
    "raftlog-node": "node/src",
}

# raftlog-node's top-level modules, bottom to top: a module may use its own layer and below.
LAYERS = {
    "raftlog-node": [
        {"config", "disk", "metrics", "tls"},
        {"raft"},
        {"group"},
        {"auth"},
        {"node"},
        {"api"},
        {"admin_http", "logging", "server"},
    ],
}

# Words a crate's (non-test) source must not contain, with why.
FORBIDDEN_WORDS = {
    "raftlog-core": [(r"\btonic\b", "gRPC"), (r"\bprost\b", "protobuf"),
                     (r"\braftlog_proto\b", "wire types"), (r"\brocksdb\b", "RocksDB"),
                     (r"\btokio::net\b", "networking")],
    "raftlog-store": [(r"\btonic\b", "gRPC"), (r"\bprost\b", "protobuf"),
                      (r"\braftlog_proto\b", "wire types")],
}
# (crate, module prefix, pattern, allowed files, why)
FORBIDDEN_IN_MODULES = [
    ("raftlog-node", "group", r"\btonic\b", set(),
     "the write path knows no gRPC: return a WriteError"),
    ("raftlog-node", "api", r"\bStatus::(?!from\b|code\b)[a-z_]+\s*\(", {"api/error.rs"},
     "only api/error.rs builds a tonic::Status (go through ApiError)"),
]

FUNCTION_LINES_MAX = 80
LONG_MARKER = re.compile(r"^\s*//\s*Long:")


def strip_comments_and_strings(text):
    """The source with comments, string and char literals blanked (newlines kept)."""
    out = []
    i, n = 0, len(text)

    def blank(s):
        return "".join("\n" if c == "\n" else " " for c in s)

    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(blank(text[i:j]))
            i = j
        elif text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append(blank(text[i:j]))
            i = j
        elif re.match(r'b?r(#*)"', text[i:i + 8]) and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            m = re.match(r'b?r(#*)"', text[i:])
            end = text.find('"' + m.group(1), i + m.end())
            j = n if end < 0 else end + 1 + len(m.group(1))
            out.append('""' + blank(text[i + 2:j]))
            i = j
        elif c == '"' or (c == "b" and text.startswith('b"', i) and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_"))):
            j = i + (2 if c == "b" else 1)
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            j += 1
            out.append('""' + blank(text[i + 2:j]))
            i = j
        elif c == "'":
            # A char literal ('a', '\n', '\u{1F600}') or a lifetime ('a).
            if text.startswith("\\", i + 1):
                j = i + 2
                while j < n and text[j] != "'":
                    j += 1
                out.append(blank(text[i:j + 1]))
                i = j + 1
            elif i + 2 < n and text[i + 2] == "'":
                out.append("   ")
                i += 3
            else:
                out.append(c)
                i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def matching_brace(text, open_at):
    depth = 0
    for j in range(open_at, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return j
    return len(text) - 1


def strip_test_items(code):
    """`code` without the items marked `#[cfg(test)]` (blanked, newlines kept)."""
    while True:
        m = re.search(r"#\[\s*cfg\s*\(\s*test\s*\)\s*\]", code)
        if not m:
            return code
        j = m.end()
        # Further attributes, then the item up to its `;` or its braced body.
        while True:
            a = re.match(r"\s*#\[", code[j:])
            if not a:
                break
            depth, k = 0, j + a.end() - 1
            while k < len(code):
                depth += {"[": 1, "]": -1}.get(code[k], 0)
                k += 1
                if depth == 0:
                    break
            j = k
        semi, brace = code.find(";", j), code.find("{", j)
        if brace >= 0 and (semi < 0 or brace < semi):
            end = matching_brace(code, brace) + 1
        else:
            end = semi + 1
        code = code[:m.start()] + "".join("\n" if c == "\n" else " " for c in code[m.start():end]) + code[end:]


def expand_use_tree(tree):
    """`a::{b, c::{d, e as f}, self}` -> [[a, b], [a, c, d], [a, c, e], [a]]."""
    tree = re.sub(r"\s+", "", tree)

    def split_top(s):
        parts, depth, cur = [], 0, ""
        for ch in s:
            if ch == "," and depth == 0:
                parts.append(cur)
                cur = ""
                continue
            depth += {"{": 1, "}": -1}.get(ch, 0)
            cur += ch
        if cur:
            parts.append(cur)
        return parts

    def walk(prefix, s):
        brace = s.find("{")
        if brace < 0:
            segs = [x for x in s.split("::") if x]
            segs = [re.sub(r"as\w+$", "", x) if re.match(r"^\w+as\w+$", x) else x for x in segs]
            if segs and segs[-1] == "self":
                segs = segs[:-1]
            return [prefix + segs]
        head = [x for x in s[:brace].split("::") if x]
        inner = s[brace + 1:s.rfind("}")]
        out = []
        for part in split_top(inner):
            out.extend(walk(prefix + head, part))
        return out

    return walk([], tree)


class Crate:
    def __init__(self, name, src):
        self.name = name
        self.src = os.path.join(ROOT, src)
        self.modules = {}  # tuple(path) -> file (relative to src)
        self.code = {}  # tuple(path) -> non-test code, comments and strings blanked
        self.full = {}  # tuple(path) -> code with comments and strings blanked, tests kept
        self.raw = {}  # tuple(path) -> the file's text
        for dirpath, _, files in os.walk(self.src):
            for f in files:
                if not f.endswith(".rs"):
                    continue
                rel = os.path.relpath(os.path.join(dirpath, f), self.src)
                if rel == "main.rs" or rel.startswith("bin/"):
                    continue
                parts = rel[:-3].split(os.sep)
                if parts[-1] in ("mod", "lib"):
                    parts = parts[:-1]
                path = tuple(parts)
                self.modules[path] = rel
                with open(os.path.join(self.src, rel), encoding="utf-8") as fh:
                    text = fh.read()
                self.raw[path] = text
                self.full[path] = strip_comments_and_strings(text)
                self.code[path] = strip_test_items(self.full[path])
        self.reexports = {m: self._reexports(m) for m in self.modules}

    def _reexports(self, module):
        out = {}
        for m in re.finditer(r"\bpub(?:\([^)]*\))?\s+use\s+([^;]+);", self.code[module]):
            for segs in expand_use_tree(m.group(1)):
                alias = re.search(r"\bas\s+(\w+)", m.group(1))
                if not segs:
                    continue
                absolute = self.absolute(module, segs)
                if absolute is not None:
                    out[segs[-1]] = absolute
                    if alias and len(expand_use_tree(m.group(1))) == 1:
                        out[alias.group(1)] = absolute
        return out

    def absolute(self, module, segs):
        """The crate-absolute segments of a path used in `module`, or None for another crate."""
        if not segs:
            return None
        if segs[0] == "crate":
            return list(segs[1:])
        if segs[0] in ("super", "self"):
            base = list(module)
            rest = list(segs)
            while rest and rest[0] in ("super", "self"):
                if rest[0] == "super":
                    base = base[:-1]
                rest = rest[1:]
            return base + rest
        if (*module, segs[0]) in self.modules:  # a child module named without `self::`
            return list(module) + list(segs)
        return None

    def resolve(self, absolute, depth=0):
        """The module an absolute path names (following `pub use` re-exports)."""
        for k in range(len(absolute), -1, -1):
            target = tuple(absolute[:k])
            if target in self.modules:
                rest = absolute[k:]
                if rest and depth < 8 and rest[0] in self.reexports.get(target, {}):
                    followed = self.reexports[target][rest[0]] + rest[1:]
                    if followed != absolute:
                        return self.resolve(followed, depth + 1)
                return target
        return ()

    def uses(self, module):
        """(target module, line) for every crate-internal path `module` uses (non-test code)."""
        code = self.code[module]
        found = []
        for m in re.finditer(r"\buse\s+([^;]+);", code):
            line = code.count("\n", 0, m.start()) + 1
            for segs in expand_use_tree(m.group(1)):
                absolute = self.absolute(module, segs)
                if absolute is not None:
                    found.append((self.resolve(absolute), line))
        for m in re.finditer(r"(?<![\w:])((?:crate|super|self)(?:::\w+)+)", code):
            line = code.count("\n", 0, m.start()) + 1
            absolute = self.absolute(module, m.group(1).split("::"))
            if absolute is not None:
                found.append((self.resolve(absolute), line))
        return [(t, line) for t, line in found if t != module]


def lift(source, target):
    """The sibling edge `source -> target` stands for, or None within one module's subtree."""
    common = 0
    while common < min(len(source), len(target)) and source[common] == target[common]:
        common += 1
    if common == len(source) or common == len(target):
        return None  # one contains the other
    return source[:common], source[common], target[common]


def cycles(graph):
    """The strongly connected components of `graph` (node -> set of nodes) with more than one
    node, each with one cycle through it, as lists of nodes (first == last)."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []

    def connect(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    result = []
    for component in found:
        members = set(component)
        # A shortest way back to the first member, through the component only.
        start, paths = component[0], {component[0]: [component[0]]}
        todo = [start]
        cycle = None
        while todo and cycle is None:
            cur = todo.pop(0)
            for nxt in sorted(graph.get(cur, ())):
                if nxt == start:
                    cycle = paths[cur] + [start]
                    break
                if nxt in members and nxt not in paths:
                    paths[nxt] = paths[cur] + [nxt]
                    todo.append(nxt)
        result.append((component, cycle))
    return result


def check_modules(crate, errors):
    siblings = {}  # parent -> {child -> {child: (file, line)}}
    for module in crate.modules:
        for target, line in crate.uses(module):
            lifted = lift(module, target)
            if lifted is None:
                continue
            parent, a, b = lifted
            siblings.setdefault(parent, {}).setdefault(a, {}).setdefault(b, (crate.modules[module], line))
    for parent, graph in sorted(siblings.items()):
        for component, cycle in cycles({a: set(bs) for a, bs in graph.items()}):
            where = "; ".join(
                f"{a} -> {b} ({graph[a][b][0]}:{graph[a][b][1]})" for a, b in zip(cycle, cycle[1:]))
            scope = "::".join(parent) or "the crate root"
            errors.append(f"{crate.name}: import cycle among the modules of {scope} "
                          f"({', '.join(component)}), e.g. {where}")
    layers = LAYERS.get(crate.name)
    if layers:
        rank = {m: i for i, group in enumerate(layers) for m in group}
        top = {m[0] for m in crate.modules if m}
        for m in sorted(top - set(rank)):
            errors.append(f"{crate.name}: top-level module `{m}` has no layer in scripts/check-layers.py")
        for module in crate.modules:
            if not module:
                continue
            for target, line in crate.uses(module):
                if not target or target[0] == module[0]:
                    continue
                if rank.get(target[0], -1) > rank.get(module[0], -1):
                    errors.append(
                        f"{crate.src}/{crate.modules[module]}:{line}: `{module[0]}` must not use "
                        f"`{target[0]}` (a higher layer; docs/architecture.md)")
    for name, prefix, pattern, allowed, why in FORBIDDEN_IN_MODULES:
        if name != crate.name:
            continue
        for module, rel in crate.modules.items():
            if module[:1] != (prefix,) or rel in allowed:
                continue
            for m in re.finditer(pattern, crate.code[module]):
                line = crate.code[module].count("\n", 0, m.start()) + 1
                errors.append(f"{crate.src}/{rel}:{line}: `{m.group(0)}`: {why}")
    for pattern, what in FORBIDDEN_WORDS.get(crate.name, []):
        for module, rel in crate.modules.items():
            for m in re.finditer(pattern, crate.code[module]):
                line = crate.code[module].count("\n", 0, m.start()) + 1
                errors.append(f"{crate.src}/{rel}:{line}: {crate.name} must know no {what} (`{m.group(0)}`)")


def check_function_lengths(crate, errors):
    for module, rel in crate.modules.items():
        code, raw_lines = crate.code[module], crate.raw[module].split("\n")
        for m in re.finditer(r"\bfn\s+(\w+)", code):
            semi, brace = code.find(";", m.end()), code.find("{", m.end())
            if brace < 0 or (0 <= semi < brace):
                continue
            end = matching_brace(code, brace)
            body = code[m.start():end + 1].split("\n")
            lines = sum(1 for line in body if line.strip())
            if lines <= FUNCTION_LINES_MAX:
                continue
            first = code.count("\n", 0, m.start())
            k = first - 1
            reasoned = False
            while k >= 0 and re.match(r"^\s*(//|#\[|$)", raw_lines[k]) and raw_lines[k].strip() != "":
                if LONG_MARKER.match(raw_lines[k]):
                    reasoned = True
                k -= 1
            if not reasoned:
                errors.append(
                    f"{crate.src}/{rel}:{first + 1}: fn {m.group(1)} has {lines} code lines (over "
                    f"{FUNCTION_LINES_MAX}): split it, or say why not in a `// Long:` comment above it")


def check_crates(errors):
    lock = ["--offline"] if os.environ.get("CHECK_LAYERS_UNLOCKED") else ["--locked"]
    out = subprocess.run(["cargo", "metadata", "--format-version", "1", *lock],
                         cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        errors.append(f"cargo metadata failed: {out.stderr.strip()}")
        return
    meta = json.loads(out.stdout)
    name_of = {p["id"]: p["name"] for p in meta["packages"]}
    members = {name_of[i] for i in meta["workspace_members"]}
    for crate in list(FORBIDDEN_CRATE_DEPS) + list(CRATE_SOURCES):
        if crate not in members:
            errors.append(f"{crate} is not a workspace member (scripts/check-layers.py names it)")
    normal, any_kind = {}, {}
    for node in meta["resolve"]["nodes"]:
        for dep in node["deps"]:
            kinds = {k["kind"] for k in dep["dep_kinds"]}
            any_kind.setdefault(node["id"], set()).add(dep["pkg"])
            if None in kinds:
                normal.setdefault(node["id"], set()).add(dep["pkg"])
    id_of = {name_of[i]: i for i in meta["workspace_members"]}

    def reach(start, graph):
        seen, todo, via = set(), [start], {start: None}
        while todo:
            cur = todo.pop()
            for nxt in graph.get(cur, ()):
                if nxt not in seen:
                    seen.add(nxt)
                    via[nxt] = cur
                    todo.append(nxt)
        return seen, via

    def chain(via, end):
        names = []
        while end is not None:
            names.append(name_of[end])
            end = via[end]
        return " -> ".join(reversed(names))

    for crate, forbidden in FORBIDDEN_CRATE_DEPS.items():
        if crate not in id_of:
            continue
        seen, via = reach(id_of[crate], normal)
        for dep in sorted(seen, key=lambda d: name_of[d]):
            if name_of[dep] in forbidden:
                errors.append(f"{crate} depends on {name_of[dep]}: {chain(via, dep)}")
    for crate in sorted(USER_SIDE_CRATES & set(id_of)):
        direct = any_kind.get(id_of[crate], set())
        seen, via = set(), {}
        for d in direct:
            s, v = reach(d, normal)
            seen |= s | {d}
            via.update({k: val for k, val in v.items() if k not in via})
            via.setdefault(d, id_of[crate])
        via[id_of[crate]] = None
        for dep in sorted(seen, key=lambda d: name_of[d]):
            if name_of[dep] in NODE_SIDE_CRATES:
                errors.append(f"{crate} depends on {name_of[dep]}: {chain(via, dep)}")


def main():
    errors = []
    check_crates(errors)
    for name, src in CRATE_SOURCES.items():
        if not os.path.isdir(os.path.join(ROOT, src)):
            errors.append(f"{name}: no source directory {src}")
            continue
        crate = Crate(name, src)
        check_modules(crate, errors)
        check_function_lengths(crate, errors)
    for e in errors:
        print(e)
    if errors:
        print(f"check-layers: {len(errors)} violation(s)", file=sys.stderr)
        return 1
    print("check-layers: crate dependencies, module layers, import cycles and function lengths OK")
    return 0


# --self-test: the check has teeth. Each case plants one violation in a copy of the tree and
# expects the check to fail with a message naming it.
PLANTED = [
    ("a lower layer uses a higher one", "node/src/group/registry.rs",
     "\nfn planted() { let _ = crate::api::error::LEADER_ID_HEADER; }\n", "group"),
    ("gRPC in the write path", "node/src/group/write.rs",
     "\nfn planted(_: tonic::Code) {}\n", "tonic"),
    ("a status built outside api/error.rs", "node/src/api/broker/topics.rs",
     "\nfn planted() -> tonic::Status { tonic::Status::internal(\"x\") }\n", "api/error.rs"),
    ("gRPC in the model", "node/core/src/ids.rs", "\npub fn planted(_: tonic::Code) {}\n", "tonic"),
    ("an import cycle", "node/src/raft/mod.rs",
     "\nfn planted() { let _ = crate::node::NodeContext::leader; }\n", "raft"),
    ("a long function", "node/core/src/ids.rs",
     "\npub fn planted() {\n" + "    let _ = 1;\n" * 90 + "}\n", "code lines"),
    ("the storage crate depends on gRPC", "node/store/Cargo.toml",
     ("[dependencies]\n", "[dependencies]\ntonic.workspace = true\n"), "raftlog-store"),
]


def self_test():
    import shutil
    import tempfile
    failures = 0
    for what, path, addition, expected in PLANTED:
        with tempfile.TemporaryDirectory() as tmp:
            root = os.path.join(tmp, "tree")
            shutil.copytree(ROOT, root, ignore=shutil.ignore_patterns(".git", "target"))
            target = os.path.join(root, path)
            with open(target) as f:
                text = f.read()
            if isinstance(addition, tuple):
                text = text.replace(*addition, 1)
            else:
                text += addition
            with open(target, "w") as f:
                f.write(text)
            # A planted dependency changes Cargo.lock: let cargo metadata update the copy's.
            out = subprocess.run([sys.executable, os.path.abspath(__file__)],
                                 env={**os.environ, "CHECK_LAYERS_ROOT": root,
                                      "CHECK_LAYERS_UNLOCKED": "1"},
                                 capture_output=True, text=True)
            caught = out.returncode != 0 and expected in out.stdout
            print(f"self-test: {what}: {'caught' if caught else 'NOT CAUGHT'}")
            if not caught:
                print(out.stdout + out.stderr)
                failures += 1
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(self_test() if sys.argv[1:] == ["--self-test"] else main())
