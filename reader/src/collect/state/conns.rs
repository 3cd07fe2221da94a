//! The live connections of the state: one flat vector sorted by cookie.
//!
//! A sorted `Vec` holds each connection in exactly its own size (a B-tree
//! filled in key order leaves its nodes about half empty, doubling memory),
//! is walked in cookie order by merges, and is updated in place by a cycle.

use super::ConnState;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Conns {
    /// Sorted by cookie, cookies unique.
    v: Vec<(u64, ConnState)>,
}

impl Conns {
    /// From entries already sorted by unique cookie (checked by the caller).
    pub fn from_sorted(v: Vec<(u64, ConnState)>) -> Self {
        debug_assert!(v.windows(2).all(|w| w[0].0 < w[1].0));
        Self { v }
    }

    pub fn into_vec(self) -> Vec<(u64, ConnState)> {
        self.v
    }

    pub fn len(&self) -> usize {
        self.v.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.v.is_empty()
    }

    pub fn get(&self, cookie: u64) -> Option<&ConnState> {
        self.v
            .binary_search_by_key(&cookie, |(k, _)| *k)
            .ok()
            .map(|i| &self.v[i].1)
    }

    /// Inserts or replaces (appending in cookie order is O(1)).
    #[cfg(test)]
    pub fn insert(&mut self, cookie: u64, c: ConnState) {
        match self.v.last() {
            Some((last, _)) if *last >= cookie => {
                match self.v.binary_search_by_key(&cookie, |(k, _)| *k) {
                    Ok(i) => self.v[i].1 = c,
                    Err(i) => self.v.insert(i, (cookie, c)),
                }
            }
            _ => self.v.push((cookie, c)),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (u64, &ConnState)> {
        self.v.iter().map(|(k, c)| (*k, c))
    }

    pub fn values(&self) -> impl Iterator<Item = &ConnState> {
        self.v.iter().map(|(_, c)| c)
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut ConnState> {
        self.v.iter_mut().map(|(_, c)| c)
    }
}

impl std::ops::Index<&u64> for Conns {
    type Output = ConnState;
    fn index(&self, cookie: &u64) -> &ConnState {
        match self.get(*cookie) {
            Some(c) => c,
            None => panic!("no connection {cookie}"),
        }
    }
}

/// Merges `add` (sorted, cookies not in `v`) into sorted `v`, in place from
/// the back: no second copy of `v`.
pub fn merge_sorted(v: &mut Vec<(u64, ConnState)>, add: Vec<(u64, ConnState)>) {
    if add.is_empty() {
        return;
    }
    if v.is_empty() {
        // The first cycle: no copy of a vector of every connection.
        *v = add;
        return;
    }
    if v.last().is_none_or(|(k, _)| *k < add[0].0) {
        v.reserve_exact(add.len());
        v.extend(add);
        return;
    }
    let old_len = v.len();
    v.reserve_exact(add.len());
    v.extend_from_slice(&add);
    let (mut i, mut j, mut out) = (old_len, add.len(), v.len());
    while j > 0 {
        out -= 1;
        if i > 0 && v[i - 1].0 > add[j - 1].0 {
            v[out] = v[i - 1];
            i -= 1;
        } else {
            v[out] = add[j - 1];
            j -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(v: &[(u64, ConnState)]) -> Vec<u64> {
        v.iter().map(|(k, _)| *k).collect()
    }

    #[test]
    fn merges_keep_order() {
        let e = |k| (k, ConnState::default());
        for (a, b) in [
            (vec![], vec![1, 2]),
            (vec![1, 5, 9], vec![]),
            (vec![1, 5, 9], vec![0, 2, 6, 10]),
            (vec![4, 5], vec![1, 2]),
            (vec![1, 2], vec![4, 5]),
        ] {
            let mut v: Vec<_> = a.iter().copied().map(e).collect();
            merge_sorted(&mut v, b.iter().copied().map(e).collect());
            let mut want = [a, b].concat();
            want.sort_unstable();
            assert_eq!(keys(&v), want);
        }
        let mut c = Conns::default();
        for k in [5u64, 1, 9, 5, 3] {
            c.insert(
                k,
                ConnState {
                    seq: k,
                    ..Default::default()
                },
            );
        }
        assert_eq!(keys(&c.v), vec![1, 3, 5, 9]);
        assert_eq!(c[&9].seq, 9);
    }
}
