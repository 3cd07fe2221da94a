//! The live connections of the state: one flat vector sorted by cookie.
//!
//! Used where connections are held in memory: a migrated v2 state, tests.
//! (A cycle streams them from and to the state file instead.)

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

    pub fn as_slice(&self) -> &[(u64, ConnState)] {
        &self.v
    }

    #[cfg(test)]
    pub fn iter(&self) -> impl Iterator<Item = (u64, &ConnState)> {
        self.v.iter().map(|(k, c)| (*k, c))
    }

    #[cfg(test)]
    pub fn values(&self) -> impl Iterator<Item = &ConnState> {
        self.v.iter().map(|(_, c)| c)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(v: &[(u64, ConnState)]) -> Vec<u64> {
        v.iter().map(|(k, _)| *k).collect()
    }

    #[test]
    fn inserts_keep_order() {
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
