//! The built-in environments: expert success, determinism, snapshot/restore, bad input, and
//! the demo file format.

use agent_learning_envs::{
    BUILT_IN, DemoError, EnvError, built_in, generate_demos, parse_demos, run_expert, write_demos,
};

#[test]
fn experts_succeed_on_at_least_95_percent_of_100_seeds() {
    for name in BUILT_IN {
        let (mut env, mut expert) = built_in(name).unwrap();
        let mut ok = 0;
        let mut steps = 0;
        for seed in 0..100 {
            let (s, outcome) = run_expert(env.as_mut(), expert.as_mut(), seed, 1000).unwrap();
            steps += s.len();
            if outcome.success {
                ok += 1;
            }
        }
        println!(
            "{name}: expert success {ok}/100, {:.1} steps per episode",
            steps as f64 / 100.0
        );
        assert!(ok >= 95, "{name}: expert succeeded on {ok}/100 seeds");
    }
}

/// A policy that ignores the state fails where the expert succeeds: the tasks need decisions.
#[test]
fn a_fixed_action_policy_fails() {
    for (name, action) in [
        ("driving", "keep_lane"),
        ("support", "issue_refund"),
        ("devops", "restart_service"),
        ("code-review", "approve"),
    ] {
        let (mut env, _) = built_in(name).unwrap();
        let mut ok = 0;
        for seed in 0..100 {
            env.reset(seed).unwrap();
            loop {
                match env.step(action) {
                    Ok(s) if s.done => break,
                    Ok(_) => {}
                    Err(e) => panic!("{name}: {e}"),
                }
            }
            ok += usize::from(env.outcome().unwrap().success);
        }
        println!("{name}: always {action:?} succeeds {ok}/100");
        assert!(ok < 70, "{name}: a fixed policy succeeds {ok}/100");
    }
}

#[test]
fn same_seed_same_episode_and_byte_identical_demo_files() {
    for name in BUILT_IN {
        let a = generate_demos(name, 5, 42).unwrap();
        let b = generate_demos(name, 5, 42).unwrap();
        let (mut fa, mut fb) = (Vec::new(), Vec::new());
        write_demos(&mut fa, &a).unwrap();
        write_demos(&mut fb, &b).unwrap();
        assert_eq!(fa, fb, "{name}");
        let c = generate_demos(name, 5, 43).unwrap();
        assert_ne!(a, c, "{name}: another seed, other episodes");
        // What was written reads back the same.
        let back = parse_demos(&fa[..], "mem").unwrap();
        assert_eq!(back, a);
    }
}

#[test]
fn stepping_after_restore_equals_stepping_the_original() {
    for name in BUILT_IN {
        let (mut env, mut expert) = built_in(name).unwrap();
        env.reset(7).unwrap();
        // Walk a few expert steps in, then branch.
        for _ in 0..3 {
            let a = expert.act(env.as_ref());
            if env.step(&a).unwrap().done {
                break;
            }
        }
        let snap = env.snapshot().expect("built-in environments snapshot");
        let mut original = Vec::new();
        let mut restored = Vec::new();
        let actions = env.actions().unwrap();
        for (run, out) in [(0, &mut original), (1, &mut restored)] {
            if run == 1 {
                env.restore(&snap).unwrap();
            }
            for i in 0..4 {
                let a = &actions[i % actions.len()];
                match env.step(a) {
                    Ok(s) => {
                        out.push(s.state.clone());
                        if s.done {
                            break;
                        }
                    }
                    Err(e) => {
                        out.push(e.to_string());
                        break;
                    }
                }
            }
        }
        assert_eq!(original, restored, "{name}");
        let (mut other, _) = built_in(name).unwrap();
        assert_eq!(
            other.restore(&snap).unwrap(),
            { env.restore(&snap).unwrap() },
            "{name}: a snapshot restores into a fresh instance"
        );
        assert!(matches!(
            other.restore(b"not json"),
            Err(EnvError::Snapshot(_))
        ));
    }
}

#[test]
fn bad_actions_get_clear_errors_not_panics() {
    for name in BUILT_IN {
        let (mut env, _) = built_in(name).unwrap();
        assert!(matches!(env.step("keep_lane"), Err(EnvError::NotStarted)));
        env.reset(1).unwrap();
        for bad in ["", "fly", "APPROVE", "keep_lane; drop table"] {
            let valid = env.actions().unwrap();
            if valid.iter().any(|a| a == bad) {
                continue;
            }
            let err = env.step(bad).unwrap_err();
            let text = err.to_string();
            assert!(
                matches!(err, EnvError::InvalidAction { .. }),
                "{name}: {text}"
            );
            assert!(
                text.contains(&valid[0]),
                "{name}: the error lists valid actions: {text}"
            );
        }
    }
    // Changing left from the leftmost lane is not a valid action there.
    let (mut env, _) = built_in("driving").unwrap();
    env.reset(3).unwrap();
    while env
        .actions()
        .unwrap()
        .iter()
        .any(|a| a == "change_lane_left")
    {
        env.step("change_lane_left").unwrap();
    }
    assert!(matches!(
        env.step("change_lane_left"),
        Err(EnvError::InvalidAction { .. })
    ));
}

#[test]
fn malformed_demo_lines_are_reported_with_line_numbers() {
    let good = {
        let mut out = Vec::new();
        write_demos(&mut out, &generate_demos("support", 2, 1).unwrap()).unwrap();
        String::from_utf8(out).unwrap()
    };
    let mut lines: Vec<String> = good.lines().map(str::to_owned).collect();
    let mut broken: serde_json::Value = serde_json::from_str(&lines[1]).unwrap();
    broken["steps"][0]["action"] = "".into();
    lines[1] = broken.to_string();
    lines.push("{not json".into());
    lines.push(lines[0].clone());
    let text = lines.join("\n");
    let err = parse_demos(text.as_bytes(), "demos.jsonl").unwrap_err();
    let DemoError::Invalid { errors, .. } = &err else {
        panic!("{err}");
    };
    let at: Vec<usize> = errors.iter().map(|(l, _)| *l).collect();
    assert_eq!(at, [2, 3, 4], "{err}");
    assert!(errors[0].1.contains("steps[0].action"), "{err}");
    assert!(errors[2].1.contains("appears twice"), "{err}");
    let empty = parse_demos(&b"\n\n"[..], "empty.jsonl").unwrap_err();
    assert!(empty.to_string().contains("no demos"), "{empty}");
}
