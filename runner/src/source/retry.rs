//! Which failed deliveries are retried, and after how long, as eventing-kafka-broker's
//! dispatcher decides: 5xx, 404, 408, 409, 429 and no answer at all (a network error, a
//! timeout) are retried with the source's backoff until its `retry` budget is spent; any other
//! status goes to the dead-letter sink at once.

use crate::manifests::Delivery;
use std::time::Duration;

/// What follows a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    /// Try again after this wait (the source's backoff for the retry about to be made).
    Retry(Duration),
    /// No retry mends it: dead-letter now.
    Permanent,
    /// Retriable, but the `retry` budget is spent: dead-letter now.
    Exhausted,
}

/// Whether a failure that answered `code` (`None`: no answer) may pass on a retry.
pub fn retriable(code: Option<u16>) -> bool {
    code.is_none_or(|c| c >= 500 || [404, 408, 409, 429].contains(&c))
}

/// What follows an attempt that failed with `code` after `retries` retries so far.
pub fn after_failure(code: Option<u16>, retries: u32, delivery: &Delivery) -> AfterFailure {
    if !retriable(code) {
        AfterFailure::Permanent
    } else if retries >= delivery.retry {
        AfterFailure::Exhausted
    } else {
        AfterFailure::Retry(delivery.wait_before_retry(retries + 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifests::Backoff;

    #[test]
    fn retried_failures_wait_the_backoff_until_the_budget_is_spent() {
        let delivery = Delivery {
            retry: 3,
            backoff: Backoff::Exponential,
            backoff_delay: Duration::from_millis(100),
            timeout: Duration::from_secs(1),
            dead_letter_topic: None,
        };
        let ms = |ms| AfterFailure::Retry(Duration::from_millis(ms));
        // (status, retries so far) → what follows
        let cases = [
            (Some(500), 0, ms(200)),
            (Some(502), 1, ms(400)),
            (Some(503), 2, ms(800)),
            (Some(503), 3, AfterFailure::Exhausted),
            (Some(504), 9, AfterFailure::Exhausted),
            (None, 0, ms(200)),
            (None, 3, AfterFailure::Exhausted),
            (Some(404), 0, ms(200)),
            (Some(408), 0, ms(200)),
            (Some(409), 0, ms(200)),
            (Some(429), 2, ms(800)),
            (Some(400), 0, AfterFailure::Permanent),
            (Some(401), 0, AfterFailure::Permanent),
            (Some(403), 0, AfterFailure::Permanent),
            (Some(413), 0, AfterFailure::Permanent),
            (Some(422), 0, AfterFailure::Permanent),
            (Some(302), 0, AfterFailure::Permanent),
            (Some(400), 3, AfterFailure::Permanent),
        ];
        for (code, retries, expected) in cases {
            assert_eq!(after_failure(code, retries, &delivery), expected, "{code:?} after {retries} retries");
        }
        let none = Delivery { retry: 0, ..delivery };
        assert_eq!(after_failure(Some(503), 0, &none), AfterFailure::Exhausted);
    }
}
