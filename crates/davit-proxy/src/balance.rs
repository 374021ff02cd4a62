//! Load-balancing algorithms. Pure apart from their own rotation state: they read the backends' load and
//! outlier state, take randomness from the caller's RNG and do no I/O, so each is tested here without
//! sockets.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use rand::Rng;

use crate::backend::Endpoint;
use crate::config::Algorithm;

/// Virtual points per backend per weight unit on the consistent-hash ring.
const RING_POINTS_PER_WEIGHT: u32 = 160;

/// Backend sets up to this size are filtered on the stack when picking.
pub(crate) const INLINE_ENDPOINTS: usize = 32;

/// One balancer per backend set; rebuilt whenever the set or the algorithm changes.
#[derive(Debug)]
pub(crate) struct Balancer {
    algorithm: Algorithm,
    next: AtomicUsize,
    /// Smooth weighted round robin: current weight per endpoint index.
    current_weights: Mutex<Vec<i64>>,
    /// Consistent hash: (point, endpoint index), sorted by point.
    ring: Vec<(u64, usize)>,
}

/// What one pick needs to know about the request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PickRequest<'a> {
    pub now: Instant,
    /// Hash of the consistent-hash key, when the request has one.
    pub hash_key: Option<u64>,
    /// Endpoint indices already tried for this request; never picked again.
    pub tried: &'a [usize],
}

impl Balancer {
    pub fn new(algorithm: Algorithm, endpoints: &[Arc<Endpoint>]) -> Balancer {
        let ring = if algorithm == Algorithm::ConsistentHash { build_ring(endpoints) } else { Vec::new() };
        Balancer { algorithm, next: AtomicUsize::new(0), current_weights: Mutex::new(vec![0; endpoints.len()]), ring }
    }

    /// Index of the endpoint to use, or `None` when every endpoint was tried already.
    ///
    /// Ejected endpoints are skipped unless all untried endpoints are ejected (panic mode). Allocates
    /// nothing for up to [`INLINE_ENDPOINTS`] endpoints, and uses `rng` only for the algorithms that
    /// need randomness.
    pub fn pick<R: Rng>(&self, endpoints: &[Arc<Endpoint>], request: &PickRequest<'_>, rng: &mut R) -> Option<usize> {
        let untried = |index: usize| !request.tried.contains(&index);
        let (mut inline, mut heap) = ([0; INLINE_ENDPOINTS], Vec::new());
        let mut eligible =
            indices(endpoints.len(), |index| untried(index) && !endpoints[index].stats.is_ejected(request.now), &mut inline, &mut heap);
        let (mut panic_inline, mut panic_heap) = ([0; INLINE_ENDPOINTS], Vec::new());
        if eligible.is_empty() {
            eligible = indices(endpoints.len(), untried, &mut panic_inline, &mut panic_heap);
        }
        if eligible.is_empty() {
            return None;
        }
        let chosen = match self.algorithm {
            Algorithm::Random => eligible[rng.random_range(0..eligible.len())],
            Algorithm::RoundRobin => eligible[self.next.fetch_add(1, Ordering::Relaxed) % eligible.len()],
            Algorithm::Weighted => self.smooth_weighted(endpoints, eligible),
            Algorithm::LeastConnections => {
                // One pass, each counter read once (they change concurrently); ties are broken uniformly
                // by reservoir sampling.
                let (mut chosen, mut least, mut ties) = (eligible[0], u64::MAX, 0u32);
                for &index in eligible {
                    let active = endpoints[index].stats.active();
                    if active < least {
                        (chosen, least, ties) = (index, active, 1);
                    } else if active == least {
                        ties += 1;
                        if rng.random_range(0..ties) == 0 {
                            chosen = index;
                        }
                    }
                }
                chosen
            }
            Algorithm::LeastResponseTime => {
                if eligible.len() == 1 {
                    eligible[0]
                } else {
                    let first = rng.random_range(0..eligible.len());
                    let mut second = rng.random_range(0..eligible.len() - 1);
                    if second >= first {
                        second += 1;
                    }
                    let (first, second) = (eligible[first], eligible[second]);
                    let score = |index: usize| endpoints[index].stats.latency_score(request.now);
                    if score(second) < score(first) { second } else { first }
                }
            }
            Algorithm::ConsistentHash => match request.hash_key {
                Some(key) => self.ring_lookup(key, eligible).unwrap_or(eligible[0]),
                None => eligible[rng.random_range(0..eligible.len())],
            },
        };
        Some(chosen)
    }

    /// nginx's smooth weighted round robin: every eligible endpoint gains its weight, the largest current
    /// weight wins and loses the total.
    fn smooth_weighted(&self, endpoints: &[Arc<Endpoint>], eligible: &[usize]) -> usize {
        let mut current = self.current_weights.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if current.len() != endpoints.len() {
            *current = vec![0; endpoints.len()];
        }
        let mut total = 0i64;
        let mut best = eligible[0];
        for &index in eligible {
            let weight = i64::from(endpoints[index].weight());
            current[index] += weight;
            total += weight;
            if current[index] > current[best] {
                best = index;
            }
        }
        current[best] -= total;
        best
    }

    /// First eligible endpoint clockwise from `key` on the ring.
    fn ring_lookup(&self, key: u64, eligible: &[usize]) -> Option<usize> {
        if self.ring.is_empty() {
            return None;
        }
        let start = self.ring.partition_point(|&(point, _)| point < key);
        (0..self.ring.len()).map(|offset| self.ring[(start + offset) % self.ring.len()].1).find(|index| eligible.contains(index))
    }
}

/// The indices in `0..count` that pass `keep`: in `inline` when `count` fits, else in `heap`.
fn indices<'a>(
    count: usize,
    keep: impl Fn(usize) -> bool,
    inline: &'a mut [usize; INLINE_ENDPOINTS],
    heap: &'a mut Vec<usize>,
) -> &'a [usize] {
    if count <= INLINE_ENDPOINTS {
        let mut len = 0;
        for index in (0..count).filter(|&index| keep(index)) {
            inline[len] = index;
            len += 1;
        }
        &inline[..len]
    } else {
        heap.extend((0..count).filter(|&index| keep(index)));
        heap
    }
}

/// Endpoint indices one request already tried, without allocating for the first few.
#[derive(Debug, Default)]
pub(crate) struct Tried {
    inline: [usize; 4],
    len: usize,
    /// All of them, once there are more than fit `inline`.
    spilled: Vec<usize>,
}

impl Tried {
    pub fn push(&mut self, index: usize) {
        if self.len < self.inline.len() {
            self.inline[self.len] = index;
        } else {
            if self.spilled.is_empty() {
                self.spilled.extend_from_slice(&self.inline);
            }
            self.spilled.push(index);
        }
        self.len += 1;
    }

    pub fn as_slice(&self) -> &[usize] {
        if self.spilled.is_empty() { &self.inline[..self.len] } else { &self.spilled }
    }
}

/// Ketama-style ring: `160 × weight` points per endpoint, placed by hashing `"<id>-<n>"`, so a backend's
/// points do not depend on the other backends and removing one only moves the keys it owned.
fn build_ring(endpoints: &[Arc<Endpoint>]) -> Vec<(u64, usize)> {
    let mut ring = Vec::new();
    for (index, endpoint) in endpoints.iter().enumerate() {
        let points = RING_POINTS_PER_WEIGHT.saturating_mul(endpoint.weight().min(1000));
        for point in 0..points {
            ring.push((hash_bytes(format!("{}-{point}", endpoint.backend.id).as_bytes()), index));
        }
    }
    ring.sort_unstable();
    ring
}

/// Stable 64-bit hash (FNV-1a followed by the splitmix64 finaliser for avalanche).
pub(crate) fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash = (hash ^ (hash >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash = (hash ^ (hash >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^ (hash >> 31)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::Duration;

    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    use super::*;
    use crate::config::{Backend, OutlierConfig};

    fn endpoints(weights: &[u32]) -> Vec<Arc<Endpoint>> {
        weights
            .iter()
            .enumerate()
            .map(|(index, &weight)| {
                let backend = Backend { id: format!("alloc-{index}"), addr: ([10, 0, 0, index as u8], 80).into(), weight };
                Arc::new(Endpoint::new(backend, Duration::from_secs(5), 1))
            })
            .collect()
    }

    fn counts(algorithm: Algorithm, endpoints: &[Arc<Endpoint>], picks: usize, seed: u64) -> Vec<usize> {
        let balancer = Balancer::new(algorithm, endpoints);
        let mut rng = SmallRng::seed_from_u64(seed);
        let request = PickRequest { now: Instant::now(), hash_key: None, tried: &[] };
        let mut counts = vec![0; endpoints.len()];
        for _ in 0..picks {
            counts[balancer.pick(endpoints, &request, &mut rng).unwrap()] += 1;
        }
        counts
    }

    fn eject(endpoint: &Endpoint, now: Instant) {
        let config =
            OutlierConfig { consecutive_failures: 1, base_ejection: Duration::from_secs(60), max_ejection: Duration::from_secs(60) };
        assert!(endpoint.stats.record_failure(None, &config, now));
    }

    #[test]
    fn round_robin_is_exact() {
        assert_eq!(counts(Algorithm::RoundRobin, &endpoints(&[1, 1, 1]), 300, 1), vec![100, 100, 100]);
        let backends = endpoints(&[1, 1, 1]);
        let balancer = Balancer::new(Algorithm::RoundRobin, &backends);
        let mut rng = SmallRng::seed_from_u64(1);
        let request = PickRequest { now: Instant::now(), hash_key: None, tried: &[] };
        let order: Vec<usize> = (0..6).map(|_| balancer.pick(&backends, &request, &mut rng).unwrap()).collect();
        assert_eq!(order, vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn smooth_weighted_matches_nginx_sequence() {
        // nginx's documented example: weights 5, 1, 1 give a a b a c a a.
        let backends = endpoints(&[5, 1, 1]);
        let balancer = Balancer::new(Algorithm::Weighted, &backends);
        let mut rng = SmallRng::seed_from_u64(1);
        let request = PickRequest { now: Instant::now(), hash_key: None, tried: &[] };
        let order: Vec<usize> = (0..7).map(|_| balancer.pick(&backends, &request, &mut rng).unwrap()).collect();
        assert_eq!(order, vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(counts(Algorithm::Weighted, &endpoints(&[1, 3]), 4000, 1), vec![1000, 3000]);
    }

    #[test]
    fn random_is_roughly_uniform() {
        let counts = counts(Algorithm::Random, &endpoints(&[1, 1, 1, 1]), 8000, 7);
        for count in counts {
            assert!((1800..2200).contains(&count), "{count}");
        }
    }

    #[test]
    fn least_connections_prefers_idle_and_breaks_ties_randomly() {
        let backends = endpoints(&[1, 1, 1]);
        let _busy = [backends[0].stats.start(), backends[0].stats.start(), backends[1].stats.start()];
        assert_eq!(counts(Algorithm::LeastConnections, &backends, 50, 3), vec![0, 0, 50]);
        let idle = endpoints(&[1, 1, 1]);
        let counts = counts(Algorithm::LeastConnections, &idle, 300, 3);
        assert!(counts.iter().all(|&count| count > 50), "{counts:?}");
    }

    #[test]
    fn least_response_time_avoids_slow_backend_until_it_decays() {
        let backends = endpoints(&[1, 1, 1]);
        let now = Instant::now();
        backends[0].stats.record_success(Duration::from_millis(50), now);
        backends[1].stats.record_success(Duration::from_millis(1), now);
        backends[2].stats.record_success(Duration::from_millis(1), now);
        let balancer = Balancer::new(Algorithm::LeastResponseTime, &backends);
        let mut rng = SmallRng::seed_from_u64(11);
        let mut counts = [0; 3];
        for _ in 0..1000 {
            counts[balancer.pick(&backends, &PickRequest { now, hash_key: None, tried: &[] }, &mut rng).unwrap()] += 1;
        }
        assert_eq!(counts[0], 0, "{counts:?}");
        // Later the fast backends still answer in 1 ms while the slow one's estimate has decayed without
        // new samples (50 ms × e^-6 ≈ 0.12 ms): it gets traffic again.
        let later = now + Duration::from_secs(30);
        backends[1].stats.record_success(Duration::from_millis(1), later);
        backends[2].stats.record_success(Duration::from_millis(1), later);
        let mut slow_picks = 0;
        for _ in 0..300 {
            if balancer.pick(&backends, &PickRequest { now: later, hash_key: None, tried: &[] }, &mut rng) == Some(0) {
                slow_picks += 1;
            }
        }
        assert!(slow_picks > 150, "{slow_picks}");
    }

    #[test]
    fn consistent_hash_is_stable_and_moves_few_keys() {
        let four = endpoints(&[1, 1, 1, 1]);
        let three: Vec<Arc<Endpoint>> = four.iter().take(3).cloned().collect();
        let ring_four = Balancer::new(Algorithm::ConsistentHash, &four);
        let ring_three = Balancer::new(Algorithm::ConsistentHash, &three);
        let mut rng = SmallRng::seed_from_u64(5);
        let now = Instant::now();
        let mut per_backend: HashMap<usize, usize> = HashMap::new();
        let mut moved = 0;
        for key in 0..1000u32 {
            let hash = hash_bytes(format!("user-{key}").as_bytes());
            let request = PickRequest { now, hash_key: Some(hash), tried: &[] };
            let before = ring_four.pick(&four, &request, &mut rng).unwrap();
            assert_eq!(ring_four.pick(&four, &request, &mut rng), Some(before));
            *per_backend.entry(before).or_default() += 1;
            let after = ring_three.pick(&three, &request, &mut rng).unwrap();
            if before != 3 && before != after {
                moved += 1;
            }
        }
        assert_eq!(moved, 0, "keys of the remaining backends must stay");
        for count in per_backend.values() {
            assert!((150..350).contains(count), "{per_backend:?}");
        }
    }

    #[test]
    fn ejected_are_skipped_and_all_ejected_means_panic_mode() {
        let backends = endpoints(&[1, 1, 1]);
        let now = Instant::now();
        eject(&backends[1], now);
        for algorithm in
            [Algorithm::Random, Algorithm::RoundRobin, Algorithm::Weighted, Algorithm::LeastConnections, Algorithm::LeastResponseTime]
        {
            assert_eq!(counts(algorithm, &backends, 100, 2)[1], 0, "{algorithm:?}");
        }
        eject(&backends[0], now);
        eject(&backends[2], now);
        let all = counts(Algorithm::RoundRobin, &backends, 300, 2);
        assert_eq!(all, vec![100, 100, 100]);
    }

    #[test]
    fn tried_keeps_every_index_in_order() {
        let mut tried = Tried::default();
        for index in 0..7 {
            tried.push(index * 10);
            assert_eq!(tried.as_slice(), (0..=index).map(|index| index * 10).collect::<Vec<_>>());
        }
    }

    #[test]
    fn more_endpoints_than_fit_inline() {
        let backends = endpoints(&[1; INLINE_ENDPOINTS + 8]);
        assert_eq!(counts(Algorithm::RoundRobin, &backends, 400, 1), vec![10; INLINE_ENDPOINTS + 8]);
        let now = Instant::now();
        eject(&backends[INLINE_ENDPOINTS + 1], now);
        assert_eq!(counts(Algorithm::LeastConnections, &backends, 400, 1)[INLINE_ENDPOINTS + 1], 0);
    }

    #[test]
    fn tried_endpoints_are_not_picked_again() {
        let backends = endpoints(&[1, 1]);
        let balancer = Balancer::new(Algorithm::Random, &backends);
        let mut rng = SmallRng::seed_from_u64(1);
        let now = Instant::now();
        for _ in 0..20 {
            assert_eq!(balancer.pick(&backends, &PickRequest { now, hash_key: None, tried: &[0] }, &mut rng), Some(1));
        }
        assert_eq!(balancer.pick(&backends, &PickRequest { now, hash_key: None, tried: &[0, 1] }, &mut rng), None);
    }
}
