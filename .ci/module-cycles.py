#!/usr/bin/env python3
"""Fails when two source files of a crate under crates/ depend on each other, directly or
through others (issue 13: "no file pair in crates/ imports each other").

A file depends on a module when it names it through `crate::` (in a `use` or a path) or
`super::`, or a parent names a child module (`views::profile`); a module is the file that defines it (`a.rs` or `a/mod.rs`). `mod x;` lines and
the tests module inside a file (from `#[cfg(test)]` on) are not dependencies."""
import os, re, sys

def modules(src):
    """file path -> module path (tuple)"""
    out = {}
    for root, _, files in os.walk(src):
        for f in files:
            if not f.endswith('.rs'):
                continue
            p = os.path.join(root, f)
            rel = os.path.relpath(p, src)[:-3].split(os.sep)
            if rel[-1] in ('lib', 'main', 'mod'):
                rel = rel[:-1]
            out[p] = tuple(rel)
    return out

def strip(text):
    text = re.sub(r'//[^\n]*', '', text)
    cut = re.search(r'#\[cfg\(test\)\]\s*(#\[[^\]]*\]\s*)*mod\s+tests', text)
    return text[:cut.start()] if cut else text

def exports(text, me, known):
    """name -> module, for the `pub use a::b::{X, Y}` re-exports of a file."""
    out = {}
    for m in re.finditer(r'pub\s+use\s+([\w:]+?)::(\{[^}]*\}|\w+)\s*;', text):
        base = tuple(x for x in m.group(1).split('::') if x)
        if base and base[0] == 'crate':
            base = base[1:]
        elif base and base[0] == 'self':
            base = me + base[1:]
        else:
            base = me + base
        names = m.group(2).strip('{}').split(',')
        for n in names:
            n = n.strip().split(' as ')[-1].strip()
            if n and base in known:
                out[n] = base
    return out

def definitions(mods):
    """item name -> the module defining it (names defined in one module only)."""
    seen = {}
    for path, me in mods.items():
        text = strip(open(path).read())
        for m in re.finditer(r'^\s*pub(?:\([^)]*\))?\s+(?:struct|enum|const|fn|type|trait|static|mod)\s+(\w+)', text, re.M):
            seen.setdefault(m.group(1), set()).add(me)
    return {n: next(iter(ms)) for n, ms in seen.items() if len(ms) == 1}

def refs(text, me, known, root_exports):
    found = set()
    # crate::a::b, use crate::{a::x, b}
    for m in re.finditer(r'\bcrate::(\{[^}]*\}|[\w:]+)', text):
        body = m.group(1)
        parts = [body] if not body.startswith('{') else [x.strip() for x in body[1:-1].split(',')]
        for part in parts:
            path = tuple(x for x in part.split('::') if x)
            target = longest(path, known)
            # `crate::X` where the crate root re-exports X: a dependency on X's module.
            if target == () and path and path[0] in root_exports:
                target = root_exports[path[0]]
            found.add(target)
    for m in re.finditer(r'\bsuper::([\w:]+)', text):
        base = me[:-1]
        path = base + tuple(x for x in m.group(1).split('::') if x)
        found.add(longest(path, known))
    # A parent names its child modules without `crate::` (`views::profile`, `self::views`).
    for m in re.finditer(r'(?<![\w:])(?:self::)?(\w+)::', text):
        child = me + (m.group(1),)
        if child in known:
            found.add(child)
    found.discard(None)
    found.discard(me)
    return found

def longest(path, known):
    for n in range(len(path), -1, -1):
        if path[:n] in known:
            return path[:n]
    return None

def cycles(graph):
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]
    def visit(v):
        index[v] = low[v] = counter[0]; counter[0] += 1
        stack.append(v); on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w); low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop(); on.discard(w); comp.append(w)
                if w == v: break
            if len(comp) > 1: out.append(comp)
    sys.setrecursionlimit(10000)
    for v in graph:
        if v not in index: visit(v)
    return out

bad = 0
for crate in sorted(os.listdir('crates')):
    src = os.path.join('crates', crate, 'src')
    if not os.path.isdir(src):
        continue
    mods = modules(src)
    known = set(mods.values())
    graph = {}
    root = [p for p, m in mods.items() if m == ()]
    # `crate::X` names X's defining module (through the root's re-exports, globs included).
    root_exports = definitions(mods)
    root_exports.update(exports(strip(open(root[0]).read()), (), known) if root else {})
    for path, me in mods.items():
        graph[me] = refs(strip(open(path).read()), me, known, root_exports)
    for comp in cycles(graph):
        bad += 1
        names = sorted('/'.join(m) or 'lib' for m in comp)
        print(f"crates/{crate}: these files depend on each other: {', '.join(names)}")
sys.exit(1 if bad else 0)
