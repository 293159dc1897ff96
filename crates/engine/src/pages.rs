//! The KV pool's page bookkeeping: reference counts, a free list, and the prefix cache.
//!
//! A page that a sequence has filled completely is registered under its key: the identity of
//! the page before it plus its own tokens, so equal keys mean equal whole prefixes (a page's
//! keys and values depend on every token before it). When the last sequence using a
//! registered page lets it go, the page keeps its contents and waits in a least-recently-used
//! list; a later request whose prompt starts with the same tokens takes it back instead of
//! recomputing it. Fresh pages come from the free list first, then by evicting the least
//! recently used cached page.
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};

/// Key of a full page: the previous page's id in the chain and this page's tokens.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    parent: u64,
    tokens: Vec<u32>,
}

/// Page bookkeeping for one pool.
pub struct Pages {
    page_size: usize,
    refs: Vec<u32>,
    key: Vec<Option<(Key, u64)>>, // registered key and chain id
    by_key: HashMap<Key, u32>,
    free: Vec<u32>,
    lru: BTreeMap<u64, u32>, // last use -> cached page with no users
    last_use: Vec<u64>,
    tick: u64,
}

/// Chain id of the page after `parent` holding `tokens`.
fn chain(parent: u64, tokens: &[u32]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    parent.hash(&mut h);
    tokens.hash(&mut h);
    h.finish()
}

/// An id of the whole-page prefix `tokens` (a multiple of `page_size` long): the chain id of
/// its last page, as [`Pages`] keys pages.
pub fn prefix_id(tokens: &[u32], page_size: usize) -> u64 {
    let mut parent = 0u64;
    for chunk in tokens.chunks_exact(page_size.max(1)) {
        parent = chain(parent, chunk);
    }
    parent
}

impl Pages {
    /// `n_pages` pages of `page_size` positions, all free.
    pub fn new(n_pages: usize, page_size: usize) -> Pages {
        Pages {
            page_size,
            refs: vec![0; n_pages],
            key: vec![None; n_pages],
            by_key: HashMap::new(),
            free: (0..n_pages as u32).rev().collect(),
            lru: BTreeMap::new(),
            last_use: vec![0; n_pages],
            tick: 0,
        }
    }

    /// Pages in the pool.
    pub fn total(&self) -> usize {
        self.refs.len()
    }

    /// Pages a new sequence could get (free or cached without users).
    pub fn available(&self) -> usize {
        self.free.len() + self.lru.len()
    }

    /// Pages held by running sequences.
    pub fn in_use(&self) -> usize {
        self.total() - self.available()
    }

    /// A page for a sequence to write into, or None when every page is in use.
    pub fn alloc(&mut self) -> Option<u32> {
        let p = match self.free.pop() {
            Some(p) => p,
            None => {
                let (&t, &p) = self.lru.iter().next()?;
                self.lru.remove(&t);
                if let Some((k, _)) = self.key[p as usize].take() {
                    self.by_key.remove(&k);
                }
                p
            }
        };
        self.refs[p as usize] = 1;
        Some(p)
    }

    /// The cached pages that hold the longest whole-page prefix of `tokens`, at most
    /// `max_pages` of them, each now referenced by the caller.
    pub fn lookup(&mut self, tokens: &[u32], max_pages: usize) -> Vec<u32> {
        let mut out = Vec::new();
        let mut parent = 0u64;
        for chunk in tokens.chunks_exact(self.page_size).take(max_pages) {
            let key = Key {
                parent,
                tokens: chunk.to_vec(),
            };
            let Some(&p) = self.by_key.get(&key) else {
                break;
            };
            if self.refs[p as usize] == 0 {
                self.lru.remove(&self.last_use[p as usize]);
            }
            self.refs[p as usize] += 1;
            parent = chain(parent, chunk);
            out.push(p);
        }
        out
    }

    /// Record that `page`, the `index`-th page of a sequence whose tokens are `tokens`, is
    /// full. If an identical page is already cached the sequence keeps its own copy.
    pub fn register(&mut self, page: u32, index: usize, tokens: &[u32]) {
        let ps = self.page_size;
        let mut parent = 0u64;
        for chunk in tokens[..index * ps].chunks_exact(ps) {
            parent = chain(parent, chunk);
        }
        let chunk = &tokens[index * ps..(index + 1) * ps];
        let key = Key {
            parent,
            tokens: chunk.to_vec(),
        };
        if self.key[page as usize].is_some() || self.by_key.contains_key(&key) {
            return;
        }
        self.by_key.insert(key.clone(), page);
        self.key[page as usize] = Some((key, chain(parent, chunk)));
    }

    /// A sequence lets `page` go.
    pub fn release(&mut self, page: u32) {
        let i = page as usize;
        self.refs[i] = self.refs[i].saturating_sub(1);
        if self.refs[i] > 0 {
            return;
        }
        if self.key[i].is_some() {
            self.tick += 1;
            self.last_use[i] = self.tick;
            self.lru.insert(self.tick, page);
        } else {
            self.free.push(page);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_pages_are_reused_and_evicted_last_used_first() {
        let mut p = Pages::new(4, 2);
        let a = [1, 2, 3, 4, 5];
        let pa: Vec<u32> = (0..3).map(|_| p.alloc().unwrap()).collect();
        p.register(pa[0], 0, &a);
        p.register(pa[1], 1, &a);
        // a second sequence with the same first 4 tokens shares both full pages
        let b = [1, 2, 3, 4, 9, 9];
        assert_eq!(p.lookup(&b, 8), vec![pa[0], pa[1]]);
        // a different first page shares nothing, even with an equal second page
        assert!(p.lookup(&[7, 7, 3, 4], 8).is_empty());
        assert_eq!(p.available(), 1);
        for &x in &pa {
            p.release(x);
        }
        for &x in &pa[..2] {
            p.release(x);
        }
        assert_eq!(p.available(), 4);
        // the cache survives its users; a lookup is capped by max_pages
        assert_eq!(p.lookup(&a, 1), vec![pa[0]]);
        p.release(pa[0]);
        // fresh pages come from the free list before cached ones are evicted
        let f1 = p.alloc().unwrap();
        let f2 = p.alloc().unwrap();
        assert!(!pa[..2].contains(&f1) && !pa[..2].contains(&f2));
        // then the least recently used cached page goes first (pa[1]; pa[0] was used since)
        assert_eq!(p.alloc(), Some(pa[1]));
        assert_eq!(p.lookup(&a, 8), vec![pa[0]]);
        assert_eq!(p.alloc(), None);
    }
}
