"""How the versions of one chunk-map leaf descend from one another, so that space accounting
compares only the slots where a version differs from the one it was copied from. Pure
logic, no I/O.

A leaf copied on write (Leaf.copy) records its origin: a weak reference to the leaf it was
copied from, that leaf's ``gen`` at the time, and one bit per slot the copy has changed since
(Leaf.mark). Invariants:

* While the parent is alive and its ``gen`` still equals the recorded one, the copy and its
  parent agree (same slot value, same overlay list object) at every slot whose bit is clear.
  Bits may be set where they agree: the bits are a superset of the differences.
* ``gen`` counts the changes a map makes to a leaf in place, so a parent changed after a copy
  was made stops vouching for it. GC's ``remap_versions`` also changes leaves in place, but
  alike in every version that agrees, so agreement survives it and ``gen`` is left alone.
* The reference is weak: a parent that no map holds any more is freed (a deleted snapshot),
  and its copies then have no usable origin.

Versions without a usable origin (loaded from a checkpoint, parent freed or changed) get one
here, computed against the previous such version of the same set with C-level comparisons,
and cached on the leaf: it stays valid under the same rules, so only the first accounting
after a restart pays for it. Only a root of the set without a usable origin is linked, and
only to an earlier root, whose origin (if any) leads out of the set, so linking makes no cycle
in the set; one made anyway (two accountings linking concurrently, or an origin chain longer
than the walk) is cut where it is found.
"""

from __future__ import annotations

from itertools import compress
from operator import is_not, ne

from vstor.store.maps.leaf import LEAF_SLOTS, Leaf

_MAX_WALK = 32  # origins followed out of the set before a version is taken as a root


class Lineage:
    """The distinct versions ``leaves`` found at one key, as a forest: ``parent[j]`` is the
    version j descends from (-1 for a root), and ``cuts[i]`` the versions that may differ from
    their parent at slot i. ``components(i)`` then groups the versions that share slot i's
    content by descent, in O(roots + cuts) instead of O(versions)."""

    def __init__(self, leaves: list[Leaf], own: list[bool]) -> None:
        n = len(leaves)
        index = {id(leaf): j for j, leaf in enumerate(leaves)}
        self.parent = parent = [-1] * n
        bits = [0] * n
        for j, leaf in enumerate(leaves):
            parent[j], bits[j] = parent_in(leaf, index)
        roots = [j for j in range(n) if parent[j] < 0]
        for prev, j in zip(roots, roots[1:], strict=False):
            if not _usable(leaves[j]):  # none of its own: derive one and keep it
                bits[j] = link(leaves[j], leaves[prev])
                parent[j] = prev
        self.cuts: dict[int, list[int]] = {}
        for j, b in enumerate(bits):
            if parent[j] >= 0:
                while b:
                    low = b & -b
                    self.cuts.setdefault(low.bit_length() - 1, []).append(j)
                    b ^= low
        self._tour(leaves, own)

    def _tour(self, leaves: list[Leaf], own: list[bool]) -> None:
        """Pre-order numbers (tin), subtree ends (tout), versions and own versions per subtree."""
        n = len(self.parent)
        children: list[list[int]] = [[] for _ in range(n)]
        for j, p in enumerate(self.parent):
            if p >= 0:
                children[p].append(j)
        tin = [-1] * n
        order: list[int] = []
        for start in range(n):
            if self.parent[start] >= 0:
                continue
            stack = [start]
            while stack:
                j = stack.pop()
                tin[j] = len(order)
                order.append(j)
                stack.extend(children[j])
        for j in range(n):  # on a cycle (see the module notes): cut it here
            if tin[j] < 0:
                leaves[j].origin = None
                self.parent[j] = -1
                for i, cut in self.cuts.items():
                    self.cuts[i] = [x for x in cut if x != j]
                self._tour(leaves, own)
                return
        size, owns = [1] * n, [int(x) for x in own]
        for j in reversed(order):
            p = self.parent[j]
            if p >= 0:
                size[p] += size[j]
                owns[p] += owns[j]
        self.roots = [j for j in order if self.parent[j] < 0]
        self.tin, self.size, self.owns = tin, size, owns
        self.tout = [t + s for t, s in zip(tin, size, strict=True)]

    def components(self, i: int) -> list[tuple[int, int, int]]:
        """(head, versions, own versions) of each group of versions sharing slot i by descent.
        A head is a root or a version that may have changed slot i; its group is its subtree
        less the subtrees of the heads below it. Different groups may still hold the same
        content (the caller compares the heads' contents)."""
        cut = self.cuts.get(i)
        if cut is None and len(self.roots) == 1:
            r = self.roots[0]
            return [(r, self.size[r], self.owns[r])]
        tin, tout, size, owns = self.tin, self.tout, self.size, self.owns
        heads = sorted(self.roots + cut if cut else self.roots, key=tin.__getitem__)
        count = {h: size[h] for h in heads}
        mine = {h: owns[h] for h in heads}
        stack: list[int] = []
        for h in heads:
            while stack and tout[stack[-1]] <= tin[h]:
                stack.pop()
            if stack:
                count[stack[-1]] -= size[h]
                mine[stack[-1]] -= owns[h]
            stack.append(h)
        return [(h, count[h], mine[h]) for h in heads]


def _usable(leaf: Leaf) -> bool:
    o = leaf.origin
    if o is None:
        return False
    p = o[0]()
    return p is not None and p.gen == o[1]


def parent_in(leaf: Leaf, index: dict[int, int]) -> tuple[int, int]:
    """(index of the nearest ancestor in the set ``index`` (id -> index), bits where the leaf
    may differ from it), or (-1, 0). An origin chain through versions outside the set adds up
    their bits."""
    bits = 0
    for _ in range(_MAX_WALK):
        o = leaf.origin
        if o is None:
            return -1, 0
        p = o[0]()
        if p is None or p.gen != o[1]:
            return -1, 0
        bits |= o[2]
        j = index.get(id(p), -1)
        if j >= 0:
            return j, bits
        leaf = p
    return -1, 0


def link(leaf: Leaf, parent: Leaf) -> int:
    """Record ``parent`` as the origin of ``leaf``, with a bit for every slot where the two
    differ (slot value, or overlay list object); returns the bits."""
    a, b = parent.slots, leaf.slots
    bits = 0
    if a != b:
        for i in compress(range(LEAF_SLOTS), map(ne, a, b)):
            bits |= 1 << i
    pa, pb = parent.overlays, leaf.overlays
    if pa != pb:  # C-level; equal lists that are different objects count as equal (same bytes)
        for c in compress(pb.keys(), map(is_not, map(pa.get, pb.keys()), pb.values())):
            bits |= 1 << (c & (LEAF_SLOTS - 1))
        for c in pa.keys() - pb.keys():
            bits |= 1 << (c & (LEAF_SLOTS - 1))
    leaf.descend_from(parent, bits)
    return bits
