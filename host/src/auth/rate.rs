//! Per-caller rate limits: a token bucket per subject (`rate: "120/min"` holds 120 calls and
//! refills two a second). With a shared store (`store.url=redis://...`) the buckets live there
//! and every replica draws from the same one; otherwise each process keeps its own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::store;

/// A limit: `capacity` calls at once, refilled at `per_second`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Rate {
    pub(crate) capacity: f64,
    pub(crate) per_second: f64,
    /// As configured (`120/min`), for messages.
    pub(crate) count: u32,
    pub(crate) unit: &'static str,
}

impl Rate {
    /// `N/s`, `N/min`, `N/h`, `N/day` (also `sec`, `second`, `m`, `minute`, `hour`, `d`).
    pub(crate) fn parse(text: &str) -> Result<Rate, String> {
        let wrong = || {
            format!("`{text}` is not a rate: write calls per unit, like \"120/min\" or \"10/s\" (units: s, min, h, day)")
        };
        let (count, unit) = text.trim().split_once('/').ok_or_else(wrong)?;
        let count: u32 = count.trim().parse().map_err(|_| wrong())?;
        if count == 0 {
            return Err(format!(
                "`{text}`: a rate of 0 lets nothing through; remove `rate` for no limit"
            ));
        }
        let (seconds, unit) = match unit.trim().to_ascii_lowercase().as_str() {
            "s" | "sec" | "second" => (1.0, "s"),
            "m" | "min" | "minute" => (60.0, "min"),
            "h" | "hour" => (3600.0, "h"),
            "d" | "day" => (86400.0, "day"),
            _ => return Err(wrong()),
        };
        Ok(Rate {
            capacity: f64::from(count),
            per_second: f64::from(count) / seconds,
            count,
            unit,
        })
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.count, self.unit)
    }
}

struct Bucket {
    tokens: f64,
    at: Instant,
    /// The rate it fills at (subjects have their own).
    rate: Rate,
}

impl Bucket {
    /// Full again by `now`: nothing worth keeping.
    fn full_by(&self, now: Instant) -> bool {
        now.duration_since(self.at).as_secs_f64() * self.rate.per_second + self.tokens
            >= self.rate.capacity
    }
}

/// Buckets past which idle ones are dropped (token subjects are unbounded in number).
const MAX_LOCAL_BUCKETS: usize = 100_000;

/// The buckets of every limited subject.
pub(crate) struct Limiter {
    local: Mutex<HashMap<Arc<str>, Bucket>>,
    shared: Option<Arc<dyn store::Backend>>,
}

impl Limiter {
    pub(crate) fn new(shared: Option<Arc<dyn store::Backend>>) -> Limiter {
        Limiter {
            local: Mutex::default(),
            shared: shared.filter(|backend| backend.shares_buckets()),
        }
    }

    /// Takes one call from `subject`'s bucket: `Ok` when there was one, else how long until
    /// the next. A shared store that fails falls back to this process's bucket (logged).
    pub(crate) async fn take(&self, subject: &Arc<str>, rate: Rate) -> Result<(), Duration> {
        if let Some(backend) = &self.shared {
            let key = subject.to_string();
            match store::call(backend, move |b| {
                b.take_token(&key, rate.capacity, rate.per_second)
            })
            .await
            {
                Ok(wait) if wait.is_zero() => return Ok(()),
                Ok(wait) => return Err(wait),
                Err(err) => {
                    tracing::warn!("rate limit of `{subject}`: the shared store failed ({err}); counting in this process");
                }
            }
        }
        self.take_local(subject, rate, Instant::now())
    }

    fn take_local(&self, subject: &Arc<str>, rate: Rate, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.local.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_LOCAL_BUCKETS && !buckets.contains_key(subject) {
            // A full bucket holds nothing worth keeping: forget those; if none is, the one
            // idle longest (one scan per new subject past the bound).
            buckets.retain(|_, b| !b.full_by(now));
            if buckets.len() >= MAX_LOCAL_BUCKETS {
                let idlest = buckets
                    .iter()
                    .min_by_key(|(_, b)| b.at)
                    .map(|(k, _)| k.clone());
                if let Some(idlest) = idlest {
                    buckets.remove(&idlest);
                }
            }
        }
        let bucket = buckets.entry(subject.clone()).or_insert(Bucket {
            tokens: rate.capacity,
            at: now,
            rate,
        });
        bucket.rate = rate;
        let refilled = now.duration_since(bucket.at).as_secs_f64() * rate.per_second;
        bucket.tokens = (bucket.tokens + refilled).min(rate.capacity);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - bucket.tokens) / rate.per_second,
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        let rate = Rate::parse("120/min").unwrap();
        assert_eq!((rate.capacity, rate.per_second), (120.0, 2.0));
        assert_eq!(rate.to_string(), "120/min");
        assert_eq!(Rate::parse(" 10 / S ").unwrap().per_second, 10.0);
        for bad in ["", "10", "x/min", "10/fortnight", "0/s", "-1/s"] {
            assert!(Rate::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_bucket_empties_and_refills() {
        let limiter = Limiter::new(None);
        let rate = Rate::parse("2/s").unwrap();
        let who: Arc<str> = "alice".into();
        let start = Instant::now();
        assert!(limiter.take_local(&who, rate, start).is_ok());
        assert!(limiter.take_local(&who, rate, start).is_ok());
        let wait = limiter.take_local(&who, rate, start).unwrap_err();
        assert!(wait > Duration::from_millis(400) && wait <= Duration::from_millis(500));
        // Another subject has its own bucket.
        assert!(limiter.take_local(&"bob".into(), rate, start).is_ok());
        assert!(limiter
            .take_local(&who, rate, start + Duration::from_millis(600))
            .is_ok());
    }
}
