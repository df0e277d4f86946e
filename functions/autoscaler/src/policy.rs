//! The scaling policy: how many collectors to run for a queue depth, as KEDA and the Kubernetes
//! HPA decide it. A pure state machine: it is fed depths, replica counts and times, and never
//! reads the clock, so it is tested on sequences of made-up times.
//!
//! # Semantics
//!
//! With `target` messages per replica, `depth` the depth key's value, `current` the replica count
//! the supervisor is keeping (the HPA's `spec.replicas`, not the live process count, so a crash
//! being restarted is not mistaken for a scale-down), and `min`/`max` the bounds:
//!
//! * **Active** means `depth > activation` (KEDA's `activationValue`).
//! * **Recommendation** (HPA): `ceil(depth / target)`, clamped to `[max(min, 1), max]`: while
//!   replicas run, the HPA never goes below one; only the activation/cooldown rule reaches zero.
//! * **From zero** (KEDA activation): at 0 replicas with `min = 0`, stay at 0 while inactive; once
//!   active, go to the recommendation (at least 1), within the scale-up step limit.
//! * **Scale up** (HPA, no up-scale stabilization): to the recommendation at once, but adding at
//!   most `scale_up_step` replicas per `scale_up_period` (the replicas at the start of the rolling
//!   period plus the step; the HPA's default "4 pods per 15 s" policy).
//! * **Scale down** (HPA stabilization window): to the highest recommendation seen within the last
//!   `stabilization` (now included), never above the current count. A burst's tail therefore does
//!   not shed replicas that the next burst needs.
//! * **To zero** (KEDA cooldown): with `min = 0`, once the queue has been inactive continuously for
//!   `cooldown`, go to 0. With the default activation of 0, inactive means depth 0.
//! * **Bounds**: the result is always within `[min, max]`; a count above `max` (or below `min`) is
//!   corrected at once, without stabilization or step limit.
//!
//! The HPA's 10 % tolerance band is not applied: the depth is an exact count, not a noisy average.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

/// The policy's settings. Every field is also an `autoscaler run` option (see the README).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyConfig {
    /// Fewest collectors to keep running (0 allows scale to zero).
    pub min_replicas: u32,
    /// Most collectors to run.
    pub max_replicas: u32,
    /// Queue depth (messages) one collector is expected to handle: desired = ceil(depth / target).
    pub target_per_replica: u64,
    /// Depth that must be exceeded to start collectors from zero (KEDA's activationValue).
    pub activation: u64,
    /// Most collectors added per scale-up period.
    pub scale_up_step: u32,
    /// The rolling period the scale-up step limit applies to.
    pub scale_up_period: Duration,
    /// Scale-down stabilization window: scale down only to the highest desired count seen within it.
    pub stabilization: Duration,
    /// How long the queue must stay inactive (depth <= activation) before scaling to zero.
    pub cooldown: Duration,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            min_replicas: 0,
            max_replicas: 10,
            target_per_replica: 100,
            activation: 0,
            scale_up_step: 4,
            scale_up_period: Duration::from_secs(15),
            stabilization: Duration::from_secs(30),
            cooldown: Duration::from_secs(60),
        }
    }
}

impl PolicyConfig {
    /// Checks the settings make sense together; the message names the offending options.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_replicas == 0 {
            return Err("--max must be at least 1".into());
        }
        if self.min_replicas > self.max_replicas {
            return Err(format!(
                "--min ({}) must not exceed --max ({})",
                self.min_replicas, self.max_replicas
            ));
        }
        if self.target_per_replica == 0 {
            return Err("--target must be at least 1 message per replica".into());
        }
        if self.scale_up_step == 0 {
            return Err("--scale-up-step must be at least 1".into());
        }
        Ok(())
    }
}

/// Why the policy chose its count; logged with every decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// At zero and the depth does not exceed the activation value.
    Inactive,
    /// From zero: the depth exceeds the activation value.
    Activated,
    /// The recommendation equals the current count.
    Steady,
    /// Up to the recommendation.
    ScaleUp,
    /// Up, but only as far as the step limit allows this period.
    ScaleUpLimited { limit: u32 },
    /// Down to the highest recommendation within the stabilization window.
    ScaleDown,
    /// The recommendation is lower, but a higher one within the window holds the count.
    Stabilizing { window_max: u32 },
    /// Inactive, waiting for the cooldown to pass before going to zero.
    CoolingDown { remaining: Duration },
    /// Inactive for the whole cooldown: to zero.
    ScaleToZero,
    /// Corrected to the minimum.
    ClampedToMin,
    /// Corrected to the maximum.
    ClampedToMax,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Inactive => f.write_str("inactive: depth at or below activation"),
            Reason::Activated => f.write_str("activated: depth above activation"),
            Reason::Steady => f.write_str("steady"),
            Reason::ScaleUp => f.write_str("scale up"),
            Reason::ScaleUpLimited { limit } => {
                write!(f, "scale up limited to {limit} by the step limit")
            }
            Reason::ScaleDown => f.write_str("scale down after stabilization"),
            Reason::Stabilizing { window_max } => {
                write!(f, "stabilizing: {window_max} desired within the window")
            }
            Reason::CoolingDown { remaining } => write!(
                f,
                "cooling down: zero in {}",
                humantime::format_duration(Duration::from_millis(remaining.as_millis() as u64))
            ),
            Reason::ScaleToZero => f.write_str("scale to zero after cooldown"),
            Reason::ClampedToMin => f.write_str("clamped to --min"),
            Reason::ClampedToMax => f.write_str("clamped to --max"),
        }
    }
}

/// One evaluation's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// The replica count to keep.
    pub desired: u32,
    /// The HPA recommendation, `ceil(depth / target)` clamped to `[max(min, 1), max]`.
    pub recommended: u32,
    pub reason: Reason,
}

/// The policy with the history its time-based rules need.
#[derive(Debug, Clone)]
pub struct ScalingPolicy {
    config: PolicyConfig,
    /// Recommendations within the stabilization window, oldest first.
    recommendations: VecDeque<(Instant, u32)>,
    /// Replicas added within the scale-up period, oldest first.
    scale_ups: VecDeque<(Instant, u32)>,
    /// Since when the queue has been inactive without interruption.
    inactive_since: Option<Instant>,
}

impl ScalingPolicy {
    /// A policy with no history. Fails if the configuration is inconsistent.
    pub fn new(config: PolicyConfig) -> Result<Self, String> {
        config.validate()?;
        Ok(ScalingPolicy {
            config,
            recommendations: VecDeque::new(),
            scale_ups: VecDeque::new(),
            inactive_since: None,
        })
    }

    pub fn config(&self) -> &PolicyConfig {
        &self.config
    }

    /// The count to keep at `now`, seeing `depth` with `current` replicas. Times must not go back.
    pub fn decide(&mut self, now: Instant, depth: u64, current: u32) -> Decision {
        let config = &self.config;
        while let Some(&(at, _)) = self.recommendations.front() {
            if now.saturating_duration_since(at) >= config.stabilization {
                self.recommendations.pop_front();
            } else {
                break;
            }
        }
        while let Some(&(at, _)) = self.scale_ups.front() {
            if now.saturating_duration_since(at) >= config.scale_up_period {
                self.scale_ups.pop_front();
            } else {
                break;
            }
        }

        let active = depth > config.activation;
        if active {
            self.inactive_since = None;
        } else if self.inactive_since.is_none() {
            self.inactive_since = Some(now);
        }

        let floor = config.min_replicas.max(1);
        let raw = u32::try_from(depth.div_ceil(config.target_per_replica)).unwrap_or(u32::MAX);
        let recommended = raw.clamp(floor, config.max_replicas);
        self.recommendations.push_back((now, recommended));

        let (desired, reason) = self.choose(now, active, recommended, current);
        let (desired, reason) = if desired < config.min_replicas {
            (config.min_replicas, Reason::ClampedToMin)
        } else if desired > config.max_replicas {
            (config.max_replicas, Reason::ClampedToMax)
        } else {
            (desired, reason)
        };
        if desired > current {
            self.scale_ups.push_back((now, desired - current));
        }
        Decision {
            desired,
            recommended,
            reason,
        }
    }

    fn choose(&self, now: Instant, active: bool, recommended: u32, current: u32) -> (u32, Reason) {
        let config = &self.config;
        let scale_to_zero_allowed = config.min_replicas == 0;
        if current == 0 && scale_to_zero_allowed {
            if !active {
                return (0, Reason::Inactive);
            }
            let desired = recommended.min(self.scale_up_limit(current));
            return (desired, Reason::Activated);
        }
        let cooldown_remaining = match self.inactive_since {
            Some(since) if scale_to_zero_allowed && !active => {
                let inactive_for = now.saturating_duration_since(since);
                if inactive_for >= config.cooldown {
                    return (0, Reason::ScaleToZero);
                }
                Some(config.cooldown - inactive_for)
            }
            _ => None,
        };
        if current > config.max_replicas {
            return (config.max_replicas, Reason::ClampedToMax);
        }
        let (desired, reason) = if recommended > current {
            let limit = self.scale_up_limit(current);
            if recommended > limit {
                (limit, Reason::ScaleUpLimited { limit })
            } else {
                (recommended, Reason::ScaleUp)
            }
        } else if recommended < current {
            let window_max = self
                .recommendations
                .iter()
                .map(|&(_, r)| r)
                .max()
                .unwrap_or(recommended);
            if window_max >= current {
                (current, Reason::Stabilizing { window_max })
            } else {
                (window_max, Reason::ScaleDown)
            }
        } else {
            (current, Reason::Steady)
        };
        match (reason, cooldown_remaining) {
            (Reason::Steady | Reason::Stabilizing { .. }, Some(remaining)) => {
                (desired, Reason::CoolingDown { remaining })
            }
            _ => (desired, reason),
        }
    }

    /// The most replicas allowed now: those at the start of the rolling period plus the step.
    fn scale_up_limit(&self, current: u32) -> u32 {
        let added: u32 = self.scale_ups.iter().map(|&(_, n)| n).sum();
        current
            .saturating_sub(added)
            .saturating_add(self.config.scale_up_step)
            .max(current)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn policy(config: PolicyConfig) -> ScalingPolicy {
        ScalingPolicy::new(config).unwrap()
    }

    /// Feeds `(seconds after t0, depth)` steps, applying each decision as the next current count,
    /// and returns the desired counts.
    fn run(policy: &mut ScalingPolicy, start: u32, steps: &[(u64, u64)]) -> Vec<u32> {
        let t0 = Instant::now();
        let mut current = start;
        steps
            .iter()
            .map(|&(secs, depth)| {
                current = policy.decide(t0 + S * secs as u32, depth, current).desired;
                current
            })
            .collect()
    }

    #[test]
    fn activation_from_zero_only_when_depth_exceeds_the_activation_value() {
        let mut p = policy(PolicyConfig {
            activation: 10,
            ..PolicyConfig::default()
        });
        let t0 = Instant::now();
        for (i, depth) in [0, 5, 10].into_iter().enumerate() {
            let d = p.decide(t0 + S * i as u32, depth, 0);
            assert_eq!(
                (d.desired, d.reason),
                (0, Reason::Inactive),
                "depth {depth}"
            );
        }
        let d = p.decide(t0 + S * 3, 11, 0);
        assert_eq!(
            (d.desired, d.recommended, d.reason),
            (1, 1, Reason::Activated)
        );
    }

    #[test]
    fn activation_goes_straight_to_the_recommendation_within_the_step() {
        let mut p = policy(PolicyConfig::default());
        let d = p.decide(Instant::now(), 250, 0);
        assert_eq!(
            (d.desired, d.recommended, d.reason),
            (3, 3, Reason::Activated)
        );
    }

    #[test]
    fn desired_is_the_ceiling_of_depth_over_target() {
        let t0 = Instant::now();
        for (depth, expected) in [(1, 1), (100, 1), (101, 2), (200, 2), (201, 3), (400, 4)] {
            let mut p = policy(PolicyConfig::default());
            let d = p.decide(t0, depth, 1);
            assert_eq!(d.recommended, expected, "depth {depth}");
            assert_eq!(d.desired, expected, "depth {depth}");
        }
    }

    #[test]
    fn desired_is_clamped_to_min_and_max() {
        let t0 = Instant::now();
        let mut p = policy(PolicyConfig {
            scale_up_step: 100,
            ..PolicyConfig::default()
        });
        let d = p.decide(t0, 1_000_000, 1);
        assert_eq!(
            (d.desired, d.recommended, d.reason),
            (10, 10, Reason::ScaleUp)
        );

        let mut p = policy(PolicyConfig::default());
        let d = p.decide(t0, 0, 12);
        assert_eq!((d.desired, d.reason), (10, Reason::ClampedToMax));

        let mut p = policy(PolicyConfig {
            min_replicas: 2,
            ..PolicyConfig::default()
        });
        let d = p.decide(t0, 0, 0);
        assert_eq!((d.desired, d.recommended), (2, 2), "min applies from zero");
        let d = p.decide(t0 + S, 50, 2);
        assert_eq!((d.desired, d.reason), (2, Reason::Steady));
    }

    #[test]
    fn scale_up_adds_at_most_the_step_per_period() {
        let mut p = policy(PolicyConfig::default());
        let t0 = Instant::now();
        let d = p.decide(t0, 1_000, 0);
        assert_eq!((d.desired, d.recommended), (4, 10));
        let d = p.decide(t0 + S, 1_000, 4);
        assert_eq!(
            (d.desired, d.reason),
            (4, Reason::ScaleUpLimited { limit: 4 }),
            "the period that added 4 is not over"
        );
        let d = p.decide(t0 + S * 14, 1_000, 4);
        assert_eq!(d.desired, 4);
        let d = p.decide(t0 + S * 15, 1_000, 4);
        assert_eq!(
            (d.desired, d.reason),
            (8, Reason::ScaleUpLimited { limit: 8 })
        );
        let d = p.decide(t0 + S * 30, 1_000, 8);
        assert_eq!((d.desired, d.reason), (10, Reason::ScaleUp));
    }

    #[test]
    fn step_limit_counts_every_addition_within_the_rolling_period() {
        let mut p = policy(PolicyConfig::default());
        // +1 at 0 s, +2 at 5 s: one more allowed until 15 s, when the first addition leaves the period.
        assert_eq!(
            run(&mut p, 0, &[(0, 100), (5, 300), (10, 900)]),
            vec![1, 3, 4]
        );
        let t0 = Instant::now();
        let mut p = policy(PolicyConfig::default());
        assert_eq!(p.decide(t0, 100, 0).desired, 1);
        assert_eq!(p.decide(t0 + S * 5, 300, 1).desired, 3);
        assert_eq!(
            p.decide(t0 + S * 15, 900, 3).desired,
            5,
            "the +1 left the period: 1 replica at its start, plus 4"
        );
        assert_eq!(
            p.decide(t0 + S * 19, 900, 5).desired,
            5,
            "+2 and +2 within it"
        );
        assert_eq!(
            p.decide(t0 + S * 20, 900, 5).desired,
            7,
            "the first +2 left it"
        );
    }

    #[test]
    fn scale_down_uses_the_highest_recommendation_within_the_stabilization_window() {
        let mut p = policy(PolicyConfig::default());
        let t0 = Instant::now();
        let at = |s: u32| t0 + S * s;
        assert_eq!(p.decide(at(0), 500, 5).reason, Reason::Steady);
        let d = p.decide(at(10), 200, 5);
        assert_eq!(
            (d.desired, d.recommended, d.reason),
            (5, 2, Reason::Stabilizing { window_max: 5 })
        );
        assert_eq!(p.decide(at(20), 100, 5).desired, 5);
        assert_eq!(
            p.decide(at(29), 100, 5).desired,
            5,
            "5 at 0 s is still in the window"
        );
        let d = p.decide(at(30), 100, 5);
        assert_eq!(
            (d.desired, d.reason),
            (2, Reason::ScaleDown),
            "the window is (0 s, 30 s]: max of 2 (10 s), 1 (20 s), 1 (29 s), 1 (30 s)"
        );
        assert_eq!(
            p.decide(at(39), 100, 2).desired,
            2,
            "2 at 10 s still in the window"
        );
        assert_eq!(p.decide(at(40), 100, 2).desired, 1);
    }

    #[test]
    fn a_new_burst_within_the_window_keeps_the_replicas() {
        let mut p = policy(PolicyConfig::default());
        let desired = run(
            &mut p,
            4,
            &[(0, 400), (10, 50), (20, 50), (25, 390), (45, 50), (56, 50)],
        );
        assert_eq!(desired, vec![4, 4, 4, 4, 4, 1]);
    }

    #[test]
    fn scale_to_zero_only_after_the_queue_was_empty_for_the_whole_cooldown() {
        let mut p = policy(PolicyConfig {
            stabilization: Duration::ZERO,
            ..PolicyConfig::default()
        });
        let t0 = Instant::now();
        let at = |s: u32| t0 + S * s;
        assert_eq!(p.decide(at(0), 300, 3).desired, 3);
        let d = p.decide(at(1), 0, 3);
        assert_eq!((d.desired, d.recommended), (1, 1), "down to one, not zero");
        let d = p.decide(at(30), 0, 1);
        assert_eq!(
            (d.desired, d.reason),
            (1, Reason::CoolingDown { remaining: S * 31 })
        );
        // Depth comes back briefly: the cooldown starts over.
        assert_eq!(p.decide(at(40), 5, 1).desired, 1);
        assert_eq!(p.decide(at(41), 0, 1).desired, 1);
        assert_eq!(p.decide(at(100), 0, 1).desired, 1, "59 s inactive");
        let d = p.decide(at(101), 0, 1);
        assert_eq!((d.desired, d.reason), (0, Reason::ScaleToZero));
        let d = p.decide(at(102), 0, 0);
        assert_eq!((d.desired, d.reason), (0, Reason::Inactive));
    }

    #[test]
    fn cooldown_counts_depth_at_or_below_activation_as_inactive() {
        let mut p = policy(PolicyConfig {
            activation: 10,
            cooldown: S * 5,
            ..PolicyConfig::default()
        });
        assert_eq!(
            run(&mut p, 1, &[(0, 8), (4, 10), (5, 10), (6, 10)]),
            vec![1, 1, 0, 0]
        );
    }

    #[test]
    fn never_below_min_even_after_the_cooldown() {
        let mut p = policy(PolicyConfig {
            min_replicas: 1,
            cooldown: S,
            stabilization: S * 2,
            ..PolicyConfig::default()
        });
        assert_eq!(
            run(&mut p, 3, &[(0, 300), (1, 0), (2, 0), (100, 0)]),
            vec![3, 3, 1, 1]
        );
        // Below the minimum (at start), the step limit does not hold the count under it.
        let mut p = policy(PolicyConfig {
            min_replicas: 6,
            ..PolicyConfig::default()
        });
        let d = p.decide(Instant::now(), 0, 0);
        assert_eq!((d.desired, d.reason), (6, Reason::ClampedToMin));
    }

    #[test]
    fn full_cycle_from_zero_to_zero() {
        let mut p = policy(PolicyConfig {
            target_per_replica: 10,
            scale_up_step: 2,
            scale_up_period: S * 2,
            stabilization: S * 3,
            cooldown: S * 5,
            ..PolicyConfig::default()
        });
        let steps = [
            (0, 0),  // idle
            (1, 45), // activate: want 5, step 2
            (2, 45), // period not over
            (3, 45), // +2
            (5, 45), // +1 reaches 5
            (6, 12), // want 2, the window holds 5
            (8, 0),  // 5 at 5 s left the window; 2 at 6 s holds
            (9, 0),  // only ones left -> 1
            (12, 0), // inactive since 8 s: the 5 s cooldown is not over
            (13, 0), // cooldown over
            (14, 0), // stays at zero
        ];
        assert_eq!(
            run(&mut p, 0, &steps),
            vec![0, 2, 2, 4, 5, 5, 2, 1, 1, 0, 0]
        );
    }

    #[test]
    fn inconsistent_configs_are_rejected() {
        let bad = [
            PolicyConfig {
                max_replicas: 0,
                ..PolicyConfig::default()
            },
            PolicyConfig {
                min_replicas: 3,
                max_replicas: 2,
                ..PolicyConfig::default()
            },
            PolicyConfig {
                target_per_replica: 0,
                ..PolicyConfig::default()
            },
            PolicyConfig {
                scale_up_step: 0,
                ..PolicyConfig::default()
            },
        ];
        for config in bad {
            assert!(ScalingPolicy::new(config.clone()).is_err(), "{config:?}");
        }
        assert!(ScalingPolicy::new(PolicyConfig::default()).is_ok());
    }
}
