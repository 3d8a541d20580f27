//! Exponential backoff with jitter, for reconnecting to the broker.

use std::time::Duration;

pub(crate) struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        Self {
            next: min.max(Duration::from_millis(1)),
            max: max.max(min),
        }
    }

    /// The next delay: doubles up to `max`, each with up to 25% taken off at
    /// random so that many clients do not retry in step.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        base.mul_f64(1.0 - fastrand::f64() * 0.25)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_max_with_jitter() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        let d: Vec<Duration> = (0..8).map(|_| b.next_delay()).collect();
        assert!(d[0] <= Duration::from_millis(100) && d[0] >= Duration::from_millis(75));
        assert!(d[1] <= Duration::from_millis(200) && d[1] >= Duration::from_millis(150));
        assert!(d[7] <= Duration::from_millis(1000) && d[7] >= Duration::from_millis(750));
    }
}
