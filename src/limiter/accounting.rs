//! How one charge against one limit splits into the reference's statistics.
//!
//! A request's hits are split across within/near/over exactly as the reference service
//! counts them, so dashboards built on its numbers read the same.

use super::request::Code;

/// The outcome of charging `hits` to a counter that stood at `before`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Charge {
    pub code: Code,
    /// What is left of the limit after this charge; 0 when over.
    pub remaining: u64,
    pub over_limit: u64,
    pub near_limit: u64,
    pub within_limit: u64,
}

/// The near-limit threshold: `floor(limit * ratio)`, computed in single precision as the
/// reference does so the thresholds agree at every limit.
pub fn near_limit_threshold(limit: u64, ratio: f32) -> u64 {
    ((limit as f32) * ratio).floor() as u64
}

/// Judges a charge of `hits` on a counter at `before` against `limit`.
pub fn charge(before: u64, hits: u64, limit: u64, near_threshold: u64) -> Charge {
    let after = before.saturating_add(hits);
    if after > limit {
        let (over, near) = if before >= limit {
            (hits, 0)
        } else {
            (after - limit, limit - near_threshold.max(before))
        };
        Charge {
            code: Code::OverLimit,
            remaining: 0,
            over_limit: over,
            near_limit: near,
            within_limit: 0,
        }
    } else {
        let near = if after > near_threshold {
            if before >= near_threshold {
                hits
            } else {
                after - near_threshold
            }
        } else {
            0
        };
        Charge {
            code: Code::Ok,
            remaining: limit - after,
            over_limit: 0,
            near_limit: near,
            within_limit: hits,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_threshold_is_eighty_percent_rounded_down() {
        assert_eq!(near_limit_threshold(10, 0.8), 8);
        assert_eq!(near_limit_threshold(5, 0.8), 4);
        assert_eq!(near_limit_threshold(1, 0.8), 0);
        assert_eq!(near_limit_threshold(100, 0.5), 50);
    }

    #[test]
    fn hits_below_the_threshold_are_only_within() {
        let c = charge(0, 1, 10, 8);
        assert_eq!(
            (
                c.code,
                c.remaining,
                c.within_limit,
                c.near_limit,
                c.over_limit
            ),
            (Code::Ok, 9, 1, 0, 0)
        );
    }

    #[test]
    fn hits_crossing_the_threshold_count_the_part_above_it_as_near() {
        let c = charge(7, 2, 10, 8);
        assert_eq!(
            (c.code, c.remaining, c.within_limit, c.near_limit),
            (Code::Ok, 1, 2, 1)
        );
    }

    #[test]
    fn reaching_the_limit_exactly_is_still_ok() {
        let c = charge(9, 1, 10, 8);
        assert_eq!((c.code, c.remaining, c.near_limit), (Code::Ok, 0, 1));
    }

    #[test]
    fn crossing_the_limit_splits_into_near_and_over() {
        let c = charge(7, 5, 10, 8);
        assert_eq!(c.code, Code::OverLimit);
        assert_eq!((c.over_limit, c.near_limit, c.within_limit), (2, 2, 0));
    }

    #[test]
    fn already_over_counts_every_hit_as_over() {
        let c = charge(12, 3, 10, 8);
        assert_eq!(
            (c.code, c.remaining, c.over_limit, c.near_limit),
            (Code::OverLimit, 0, 3, 0)
        );
    }

    #[test]
    fn a_check_only_charge_is_over_only_past_the_limit() {
        assert_eq!(charge(10, 0, 10, 8).code, Code::Ok);
        assert_eq!(charge(10, 0, 10, 8).remaining, 0);
        assert_eq!(charge(11, 0, 10, 8).code, Code::OverLimit);
    }

    #[test]
    fn a_zero_limit_bans_every_request() {
        let c = charge(0, 1, 0, 0);
        assert_eq!((c.code, c.over_limit), (Code::OverLimit, 1));
    }
}
