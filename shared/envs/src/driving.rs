//! A seeded multi-lane highway with traffic: reach the exit on the right without a collision.

use serde::{Deserialize, Serialize};

use crate::{EnvError, Environment, Expert, Outcome, Rng, Step, invalid};

pub const ACTIONS: [&str; 5] = [
    "accelerate",
    "brake",
    "keep_lane",
    "change_lane_left",
    "change_lane_right",
];

const LANES: usize = 3;
const CAR_LENGTH: f64 = 5.0;
const SENSOR_RANGE: f64 = 150.0;
const MAX_STEPS: u32 = 300;
const MAX_SPEED: f64 = 36.0;
const ACCEL: f64 = 2.0;
const BRAKE: f64 = 4.0;

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
struct Car {
    lane: usize,
    pos: f64,
    speed: f64,
    /// Speed this driver wants.
    desired: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct World {
    ego: Car,
    traffic: Vec<Car>,
    exit_pos: f64,
    step: u32,
    done: bool,
    collided: bool,
    hard_brakes: u32,
}

/// The highway. Lane 0 is the rightmost lane; the exit leaves from lane 0.
#[derive(Debug, Default, Clone)]
pub struct Driving {
    world: Option<World>,
}

/// The gap and speed of the nearest car ahead and behind the ego in one lane.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LaneView {
    pub ahead: Option<(f64, f64)>,
    pub behind: Option<(f64, f64)>,
}

/// Intelligent Driver Model acceleration towards `desired` behind a leader `(gap, speed)`.
fn idm(speed: f64, desired: f64, leader: Option<(f64, f64)>) -> f64 {
    let free = 1.0 - (speed / desired.max(1.0)).powi(4);
    let interaction = match leader {
        Some((gap, lead_speed)) => {
            let s_star =
                2.0 + speed * 1.2 + speed * (speed - lead_speed) / (2.0 * (ACCEL * BRAKE).sqrt());
            (s_star.max(0.0) / gap.max(0.1)).powi(2)
        }
        None => 0.0,
    };
    (ACCEL * (free - interaction)).clamp(-8.0, ACCEL)
}

impl World {
    fn view(&self, lane: usize) -> LaneView {
        let mut ahead: Option<(f64, f64)> = None;
        let mut behind: Option<(f64, f64)> = None;
        for c in self.traffic.iter().filter(|c| c.lane == lane) {
            let d = c.pos - self.ego.pos;
            if d >= 0.0 {
                let gap = d - CAR_LENGTH;
                if ahead.is_none_or(|(g, _)| gap < g) {
                    ahead = Some((gap, c.speed));
                }
            } else {
                let gap = -d - CAR_LENGTH;
                if behind.is_none_or(|(g, _)| gap < g) {
                    behind = Some((gap, c.speed));
                }
            }
        }
        LaneView { ahead, behind }
    }

    fn render(&self) -> String {
        let fmt = |g: Option<(f64, f64)>| match g {
            Some((gap, v)) if gap <= SENSOR_RANGE => {
                format!("{:.0} m at {:.1} m/s", gap.max(0.0), v)
            }
            _ => "none".to_owned(),
        };
        let mut s = format!(
            "ego lane {} of {LANES} (lane 0 is the rightmost; the exit is on the right), speed {:.1} m/s, exit in {:.0} m.",
            self.ego.lane,
            self.ego.speed,
            (self.exit_pos - self.ego.pos).max(0.0)
        );
        for lane in 0..LANES {
            let v = self.view(lane);
            s.push_str(&format!(
                " lane {lane}: ahead {}, behind {}.",
                fmt(v.ahead),
                fmt(v.behind)
            ));
        }
        if self.done {
            s.push_str(if self.collided {
                " collision: episode over."
            } else if self.ego.pos >= self.exit_pos && self.ego.lane == 0 {
                " took the exit: episode over."
            } else if self.ego.pos >= self.exit_pos {
                " missed the exit: episode over."
            } else {
                " out of time: episode over."
            });
        }
        s
    }

    fn new(seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let exit_pos = rng.range(1200.0, 2000.0);
        let ego = Car {
            lane: 1 + rng.below(LANES - 1),
            pos: 0.0,
            speed: rng.range(20.0, 28.0),
            desired: 30.0,
        };
        let mut traffic: Vec<Car> = Vec::new();
        let count = 10 + rng.below(8);
        let mut tries = 0;
        while traffic.len() < count && tries < 1000 {
            tries += 1;
            let lane = rng.below(LANES);
            let pos = rng.range(-200.0, exit_pos + 300.0);
            let desired = match lane {
                0 => rng.range(18.0, 24.0),
                1 => rng.range(22.0, 28.0),
                _ => rng.range(26.0, 32.0),
            };
            let clear_of_ego = lane != ego.lane || (pos - ego.pos).abs() > 40.0;
            let clear_of_others = traffic
                .iter()
                .all(|c| c.lane != lane || (c.pos - pos).abs() > 50.0);
            if clear_of_ego && clear_of_others {
                traffic.push(Car {
                    lane,
                    pos,
                    speed: desired,
                    desired,
                });
            }
        }
        World {
            ego,
            traffic,
            exit_pos,
            step: 0,
            done: false,
            collided: false,
            hard_brakes: 0,
        }
    }

    fn advance(&mut self, action: &str) {
        let mut accel = 0.0;
        match action {
            "accelerate" => accel = ACCEL,
            "brake" => {
                accel = -BRAKE;
                if self.view(self.ego.lane).ahead.is_none_or(|(g, _)| g > 60.0) {
                    self.hard_brakes += 1;
                }
            }
            "change_lane_left" => self.ego.lane += 1,
            "change_lane_right" => self.ego.lane -= 1,
            _ => {}
        }
        // A lane change onto another car is a collision at once.
        let lane = self.ego.lane;
        if self
            .traffic
            .iter()
            .any(|c| c.lane == lane && (c.pos - self.ego.pos).abs() < CAR_LENGTH)
        {
            self.collided = true;
            self.done = true;
            return;
        }
        // Traffic follows the car ahead in its lane, the ego included.
        let mut accels = Vec::with_capacity(self.traffic.len());
        for (i, c) in self.traffic.iter().enumerate() {
            let mut leader: Option<(f64, f64)> = None;
            let others = self
                .traffic
                .iter()
                .enumerate()
                .filter(|(j, o)| *j != i && o.lane == c.lane)
                .map(|(_, o)| (o.pos, o.speed))
                .chain((self.ego.lane == c.lane).then_some((self.ego.pos, self.ego.speed)));
            for (pos, speed) in others {
                let gap = pos - c.pos - CAR_LENGTH;
                if pos > c.pos && leader.is_none_or(|(g, _)| gap < g) {
                    leader = Some((gap, speed));
                }
            }
            accels.push(idm(c.speed, c.desired, leader));
        }
        let before: Vec<f64> = self.traffic.iter().map(|c| c.pos - self.ego.pos).collect();
        self.ego.speed = (self.ego.speed + accel).clamp(0.0, MAX_SPEED);
        self.ego.pos += self.ego.speed;
        for (c, a) in self.traffic.iter_mut().zip(accels) {
            c.speed = (c.speed + a).clamp(0.0, MAX_SPEED);
            c.pos += c.speed;
        }
        self.step += 1;
        // Overlapping or passing through a car in the same lane is a collision.
        for (c, d0) in self.traffic.iter().zip(before) {
            if c.lane != self.ego.lane {
                continue;
            }
            let d1 = c.pos - self.ego.pos;
            if d1.abs() < CAR_LENGTH || d0.signum() != d1.signum() {
                self.collided = true;
                self.done = true;
                return;
            }
        }
        if self.ego.pos >= self.exit_pos || self.step >= MAX_STEPS {
            self.done = true;
        }
    }

    fn valid_actions(&self) -> Vec<String> {
        ACTIONS
            .iter()
            .filter(|a| match **a {
                "change_lane_left" => self.ego.lane + 1 < LANES,
                "change_lane_right" => self.ego.lane > 0,
                _ => true,
            })
            .map(|a| a.to_string())
            .collect()
    }
}

impl Driving {
    fn world(&self) -> Result<&World, EnvError> {
        self.world.as_ref().ok_or(EnvError::NotStarted)
    }

    /// What the ego sees in `lane`.
    pub fn lane_view(&self, lane: usize) -> Option<LaneView> {
        self.world.as_ref().map(|w| w.view(lane))
    }
}

impl Environment for Driving {
    fn name(&self) -> &'static str {
        "driving"
    }

    fn reset(&mut self, seed: u64) -> Result<String, EnvError> {
        let w = World::new(seed);
        let s = w.render();
        self.world = Some(w);
        Ok(s)
    }

    fn step(&mut self, action: &str) -> Result<Step, EnvError> {
        let w = self.world.as_mut().ok_or(EnvError::NotStarted)?;
        if w.done {
            return Err(EnvError::Done);
        }
        let valid = w.valid_actions();
        if !valid.iter().any(|a| a == action) {
            return Err(invalid(action, &valid));
        }
        w.advance(action);
        Ok(Step {
            state: w.render(),
            done: w.done,
        })
    }

    fn actions(&self) -> Option<Vec<String>> {
        self.world().ok().map(World::valid_actions)
    }

    fn snapshot(&self) -> Option<Vec<u8>> {
        self.world.as_ref().and_then(|w| serde_json::to_vec(w).ok())
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<String, EnvError> {
        let w: World =
            serde_json::from_slice(snapshot).map_err(|e| EnvError::Snapshot(e.to_string()))?;
        let s = w.render();
        self.world = Some(w);
        Ok(s)
    }

    fn outcome(&self) -> Option<Outcome> {
        let w = self.world.as_ref()?;
        if !w.done {
            return None;
        }
        let success = !w.collided && w.ego.pos >= w.exit_pos && w.ego.lane == 0;
        Some(Outcome {
            success,
            metrics: [
                ("steps".to_owned(), f64::from(w.step)),
                ("collision".to_owned(), f64::from(u8::from(w.collided))),
                ("hard_brakes".to_owned(), f64::from(w.hard_brakes)),
            ]
            .into(),
        })
    }
}

/// IDM car following with MOBIL-style lane changes: overtake a slow leader when the other
/// lane is clearly better and safe, and move right for the exit early enough.
#[derive(Debug, Default, Clone, Copy)]
pub struct DrivingExpert;

fn safe_to_enter(view: LaneView, speed: f64) -> bool {
    let ahead_ok = view
        .ahead
        .is_none_or(|(gap, v)| gap > 8.0 + (speed - v).max(0.0) * 2.0 + speed * 0.3);
    let behind_ok = view
        .behind
        .is_none_or(|(gap, v)| gap > 8.0 + (v - speed).max(0.0) * 2.5 + v * 0.3);
    ahead_ok && behind_ok
}

impl Expert for DrivingExpert {
    fn act(&mut self, env: &dyn Environment) -> String {
        let Some(w) = env
            .snapshot()
            .and_then(|s| serde_json::from_slice::<World>(&s).ok())
        else {
            return "keep_lane".into();
        };
        let ego = w.ego;
        let to_exit = w.exit_pos - ego.pos;
        let here = w.view(ego.lane);
        let exit_mode = to_exit < 300.0 + 350.0 * ego.lane as f64;
        let desired = if exit_mode { 24.0 } else { ego.desired };

        if exit_mode && ego.lane > 0 {
            let right = w.view(ego.lane - 1);
            if safe_to_enter(right, ego.speed) {
                return "change_lane_right".into();
            }
            // Open a gap: fall back behind a car beside us unless that would hit the leader.
            let follow = idm(ego.speed, desired, here.ahead);
            if follow < -1.0 {
                return "brake".into();
            }
            return match right.behind {
                Some((gap, _)) if gap < 15.0 && here.ahead.is_none_or(|(g, _)| g > 30.0) => {
                    "accelerate".into()
                }
                _ if ego.speed > 14.0 => "brake".into(),
                _ => "keep_lane".into(),
            };
        }

        if !exit_mode && ego.lane + 1 < LANES {
            let left = w.view(ego.lane + 1);
            let slow_leader = here
                .ahead
                .is_some_and(|(gap, v)| gap < 50.0 && v < desired - 3.0);
            let left_better = left
                .ahead
                .is_none_or(|(gap, v)| gap > 80.0 || v > desired - 1.0);
            if slow_leader && left_better && safe_to_enter(left, ego.speed) && to_exit > 900.0 {
                return "change_lane_left".into();
            }
        }

        let a = idm(ego.speed, desired, here.ahead);
        if a < -1.0 {
            "brake".into()
        } else if a > 0.5 && ego.speed + ACCEL <= MAX_SPEED {
            "accelerate".into()
        } else {
            "keep_lane".into()
        }
    }
}
