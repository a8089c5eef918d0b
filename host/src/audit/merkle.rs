//! One Merkle tree over the whole audit log, hashed as RFC 9162 (Certificate
//! Transparency v2) §2.1 says: leaf = SHA-256(0x00 || record bytes), node =
//! SHA-256(0x01 || left || right), the empty tree is SHA-256(""), and a tree
//! of n leaves splits at the largest power of two smaller than n. So any CT
//! tooling can check our roots and proofs.
//!
//! The writer keeps only the [`Frontier`] (the roots of the perfect subtrees
//! along the right edge: at most 64 hashes); proofs are computed from the
//! leaf hashes, which `audit prove` reads back from the segments.

use sha2::{Digest, Sha256};

/// A SHA-256 digest.
pub type Hash = [u8; 32];

/// The hash of one record (its line without the newline) as a leaf.
pub fn leaf_hash(record: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(record);
    h.finalize().into()
}

/// The hash of an inner node.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The root of the empty tree: SHA-256 of nothing.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// Largest power of two strictly smaller than `n` (n ≥ 2).
fn split(n: usize) -> usize {
    debug_assert!(n >= 2);
    1 << (usize::BITS - 1 - (n - 1).leading_zeros())
}

/// MTH(D[n]) over leaf hashes.
pub fn root(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            let k = split(n);
            node_hash(&root(&leaves[..k]), &root(&leaves[k..]))
        }
    }
}

/// PATH(m, D[n]): the audit path of leaf `m` (RFC 9162 §2.1.3.1), leaf to root.
pub fn inclusion_proof(leaves: &[Hash], m: usize) -> Vec<Hash> {
    assert!(m < leaves.len(), "leaf {m} outside a tree of {}", leaves.len());
    let mut out = Vec::new();
    path(leaves, m, &mut out);
    out
}

fn path(leaves: &[Hash], m: usize, out: &mut Vec<Hash>) {
    let n = leaves.len();
    if n <= 1 {
        return;
    }
    let k = split(n);
    if m < k {
        path(&leaves[..k], m, out);
        out.push(root(&leaves[k..]));
    } else {
        path(&leaves[k..], m - k, out);
        out.push(root(&leaves[..k]));
    }
}

/// PROOF(m, D[n]): that the tree of the first `m` leaves is a prefix of the
/// tree of all of them (RFC 9162 §2.1.4.1). `0 < m <= n`.
pub fn consistency_proof(leaves: &[Hash], m: usize) -> Vec<Hash> {
    assert!(m > 0 && m <= leaves.len(), "no consistency proof from {m} to {}", leaves.len());
    let mut out = Vec::new();
    subproof(leaves, m, true, &mut out);
    out
}

fn subproof(leaves: &[Hash], m: usize, whole: bool, out: &mut Vec<Hash>) {
    let n = leaves.len();
    if m == n {
        if !whole {
            out.push(root(leaves));
        }
        return;
    }
    let k = split(n);
    if m <= k {
        subproof(&leaves[..k], m, whole, out);
        out.push(root(&leaves[k..]));
    } else {
        subproof(&leaves[k..], m - k, false, out);
        out.push(root(&leaves[..k]));
    }
}

/// Verify an inclusion proof (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(leaf_index: u64, tree_size: u64, leaf: &Hash, proof: &[Hash], root: &Hash) -> bool {
    if leaf_index >= tree_size {
        return false;
    }
    let (mut fnode, mut snode) = (leaf_index, tree_size - 1);
    let mut r = *leaf;
    for p in proof {
        if snode == 0 {
            return false;
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    snode == 0 && r == *root
}

/// Verify a consistency proof between two tree heads (RFC 9162 §2.1.4.2).
pub fn verify_consistency(size1: u64, size2: u64, root1: &Hash, root2: &Hash, proof: &[Hash]) -> bool {
    if size1 == 0 || size1 > size2 {
        return false;
    }
    if size1 == size2 {
        return proof.is_empty() && root1 == root2;
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if size1.is_power_of_two() {
        path.push(*root1);
    }
    path.extend_from_slice(proof);
    let Some((first, rest)) = path.split_first() else { return false };
    let (mut fnode, mut snode) = (size1 - 1, size2 - 1);
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let (mut fr, mut sr) = (*first, *first);
    for c in rest {
        if snode == 0 {
            return false;
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    fr == *root1 && sr == *root2 && snode == 0
}

/// The right edge of the tree: enough to append leaves and compute the root
/// without keeping the leaves (what the writer holds).
#[derive(Debug, Clone, Default)]
pub struct Frontier {
    /// Roots of perfect subtrees, left to right, with their heights.
    stack: Vec<(Hash, u32)>,
    size: u64,
}

impl Frontier {
    /// Append a leaf hash.
    pub fn push(&mut self, leaf: Hash) {
        let mut cur = (leaf, 0u32);
        while let Some(&(top, height)) = self.stack.last() {
            if height != cur.1 {
                break;
            }
            self.stack.pop();
            cur = (node_hash(&top, &cur.0), height + 1);
        }
        self.stack.push(cur);
        self.size += 1;
    }

    /// Leaves so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The root of the tree of every leaf pushed (MTH).
    pub fn root(&self) -> Hash {
        let mut it = self.stack.iter().rev();
        let Some(&(mut acc, _)) = it.next() else { return empty_root() };
        for (h, _) in it {
            acc = node_hash(h, &acc);
        }
        acc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The eight leaves of Certificate Transparency's reference tests; the
    /// expected values below were computed for this repository with an
    /// independent, literal transcription of RFC 9162's recursive
    /// definitions (Python hashlib), not with this module.
    fn leaves() -> Vec<Hash> {
        let data: [&[u8]; 8] = [
            b"",
            b"\x00",
            b"\x10",
            b"\x20\x21",
            b"\x30\x31",
            b"\x40\x41\x42\x43",
            b"\x50\x51\x52\x53\x54\x55\x56\x57",
            b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
        ];
        data.iter().map(|d| leaf_hash(d)).collect()
    }

    fn h(s: &str) -> Hash {
        hex::decode(s).unwrap().try_into().unwrap()
    }

    const ROOTS: [&str; 8] = [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    #[test]
    fn roots_match_the_vectors_recursively_and_incrementally() {
        let l = leaves();
        assert_eq!(hex::encode(root(&[])), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        assert_eq!(hex::encode(Frontier::default().root()), hex::encode(empty_root()));
        let mut f = Frontier::default();
        for n in 1..=8 {
            f.push(l[n - 1]);
            assert_eq!(hex::encode(root(&l[..n])), ROOTS[n - 1], "MTH of {n} leaves");
            assert_eq!(hex::encode(f.root()), ROOTS[n - 1], "frontier root of {n} leaves");
            assert_eq!(f.size(), n as u64);
        }
    }

    #[test]
    fn inclusion_proofs_match_the_vectors_and_verify() {
        let l = leaves();
        let cases: [(usize, usize, &[&str]); 5] = [
            (0, 8, &["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7", "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e", "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
            (5, 8, &["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b", "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0", "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
            (2, 3, &["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
            (0, 1, &[]),
            (6, 7, &["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a", "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
        ];
        for (m, n, want) in cases {
            let proof = inclusion_proof(&l[..n], m);
            assert_eq!(proof.iter().map(hex::encode).collect::<Vec<_>>(), want, "PATH({m}, D[{n}])");
            let r = h(ROOTS[n - 1]);
            assert!(verify_inclusion(m as u64, n as u64, &l[m], &proof, &r));
            // Wrong leaf, index, size or root: refused.
            assert!(!verify_inclusion(m as u64, n as u64, &leaf_hash(b"forged"), &proof, &r));
            assert!(!verify_inclusion(m as u64 + 1, n as u64, &l[m], &proof, &r) || proof.is_empty() && n == 1);
            assert!(!verify_inclusion(m as u64, n as u64 + 1, &l[m], &proof, &r));
            assert!(!verify_inclusion(m as u64, n as u64, &l[m], &proof, &h(ROOTS[0])) || n == 1);
        }
        // Every leaf of every size up to 8 round-trips.
        for n in 1..=8 {
            for m in 0..n {
                assert!(verify_inclusion(m as u64, n as u64, &l[m], &inclusion_proof(&l[..n], m), &h(ROOTS[n - 1])), "leaf {m} of {n}");
            }
        }
    }

    #[test]
    fn consistency_proofs_match_the_vectors_and_verify() {
        let l = leaves();
        let cases: [(usize, usize, &[&str]); 5] = [
            (1, 8, &["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7", "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e", "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
            (6, 8, &["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a", "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0", "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
            (2, 5, &["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e", "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
            (4, 8, &["6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
            (3, 7, &["0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7", "07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7", "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125", "837dbb152e9b079010717e84e865da4ebc0fa198a806d59d31bf15accef22d0e"]),
        ];
        for (m, n, want) in cases {
            let proof = consistency_proof(&l[..n], m);
            assert_eq!(proof.iter().map(hex::encode).collect::<Vec<_>>(), want, "PROOF({m}, D[{n}])");
            assert!(verify_consistency(m as u64, n as u64, &h(ROOTS[m - 1]), &h(ROOTS[n - 1]), &proof));
            assert!(!verify_consistency(m as u64, n as u64, &h(ROOTS[m - 1]), &h(ROOTS[0]), &proof));
            assert!(!verify_consistency(m as u64, n as u64, &leaf_hash(b"x"), &h(ROOTS[n - 1]), &proof));
        }
        for n in 1..=8 {
            for m in 1..=n {
                let p = consistency_proof(&l[..n], m);
                assert!(verify_consistency(m as u64, n as u64, &h(ROOTS[m - 1]), &h(ROOTS[n - 1]), &p), "{m} → {n}");
            }
        }
    }

    #[test]
    fn large_trees_agree_between_frontier_and_recursion() {
        let l: Vec<Hash> = (0..1000u32).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        let mut f = Frontier::default();
        for (i, leaf) in l.iter().enumerate() {
            f.push(*leaf);
            if [1, 2, 3, 255, 256, 257, 999].contains(&i) {
                assert_eq!(f.root(), root(&l[..=i]));
            }
        }
        let r = f.root();
        for m in [0usize, 1, 511, 512, 998, 999] {
            assert!(verify_inclusion(m as u64, 1000, &l[m], &inclusion_proof(&l, m), &r));
        }
        for m in [1usize, 7, 512, 513, 999, 1000] {
            assert!(verify_consistency(m as u64, 1000, &root(&l[..m]), &r, &consistency_proof(&l, m)));
        }
    }
}
