//! De-duplication quality on a labelled set: paraphrase pairs should MERGE, distinct but
//! related insights should ADD. Prints precision and recall of MERGE at the default threshold.

mod common;

use agent_learning_domain::DeltaKind;
use common::{curator_in, insight};

/// Same lesson, other words.
const PARAPHRASES: &[(&str, &str)] = &[
    (
        "Keep a safe following distance of at least two seconds.",
        "Stay at least two seconds behind the car in front.",
    ),
    (
        "Move to the exit lane early instead of at the last moment.",
        "Change into the exit lane well before the exit rather than at the last second.",
    ),
    (
        "Check the gap behind before changing lanes.",
        "Before switching lanes, look at the space behind you in the target lane.",
    ),
    (
        "Slow down when the car ahead brakes suddenly.",
        "Reduce your speed if the vehicle in front brakes abruptly.",
    ),
    (
        "Do not overtake on the right side.",
        "Never pass other vehicles on their right.",
    ),
    (
        "Accelerating into a shrinking gap causes rear-end collisions.",
        "Speeding up while the gap ahead is closing leads to rear-end crashes.",
    ),
    (
        "The left lane is usually faster than the right lane.",
        "Traffic in the left lane typically moves quicker than in the right lane.",
    ),
    (
        "Braking hard on an empty road wastes time.",
        "Hard braking when the road is clear loses time for nothing.",
    ),
    (
        "Keep your lane when the adjacent lanes are congested.",
        "Stay in your lane if the neighbouring lanes are jammed.",
    ),
    (
        "Match the speed of traffic when merging onto the highway.",
        "When joining the highway, adapt your speed to the flow of traffic.",
    ),
    (
        "Apologise to the customer before explaining the fix.",
        "Say sorry to the customer first, then explain the solution.",
    ),
    (
        "Ask for the order number before looking up a refund.",
        "Request the customer's order number before checking on a refund.",
    ),
    (
        "Escalate to a human agent when the customer asks twice.",
        "Hand the conversation to a human if the customer requests one a second time.",
    ),
    (
        "Refunds above one hundred dollars need manager approval.",
        "A manager must approve any refund over 100 dollars.",
    ),
    (
        "Do not promise delivery dates the warehouse has not confirmed.",
        "Never commit to a delivery date that the warehouse hasn't confirmed.",
    ),
    (
        "Confirm the customer's identity before changing account details.",
        "Verify who the customer is before you modify their account information.",
    ),
    (
        "Close the ticket only after the customer confirms the issue is solved.",
        "Only resolve the ticket once the customer says the problem is fixed.",
    ),
    (
        "Roll back the latest deploy when errors spike right after it.",
        "If errors jump just after a deployment, revert that deployment first.",
    ),
    (
        "Check disk usage before restarting a database.",
        "Look at how full the disks are before you restart the database.",
    ),
    (
        "Do not restart all pods at the same time.",
        "Never restart every pod simultaneously.",
    ),
    (
        "Page the on-call engineer when latency stays high for ten minutes.",
        "Alert the on-call person if latency remains elevated for 10 minutes.",
    ),
    (
        "Read the error logs before changing any configuration.",
        "Look through the error logs first, before modifying configuration.",
    ),
    (
        "Scale out the web tier when CPU stays above ninety percent.",
        "Add web servers if CPU usage remains over 90%.",
    ),
    (
        "Silence duplicate alerts during an incident to reduce noise.",
        "Mute repeated alerts while an incident is ongoing so they don't add noise.",
    ),
    (
        "Ask for tests when a pull request changes behaviour.",
        "Request tests whenever a PR modifies behaviour.",
    ),
    (
        "Flag unchecked error returns in Go code.",
        "Point out Go code that ignores returned errors.",
    ),
    (
        "Prefer small pull requests that do one thing.",
        "Favour small PRs focused on a single change.",
    ),
    (
        "Reject secrets committed to the repository.",
        "Block any change that commits credentials into the repo.",
    ),
    (
        "Suggest renaming variables whose names do not explain them.",
        "Recommend better names for variables that are not self-explanatory.",
    ),
    (
        "Check that new database queries use an index.",
        "Verify that newly added SQL queries are backed by an index.",
    ),
    (
        "Approve only after the continuous integration checks pass.",
        "Give approval only once CI has passed.",
    ),
    (
        "Leave one comment per issue rather than many small ones.",
        "Write a single comment for each problem instead of lots of tiny comments.",
    ),
];

/// Same topic, different lesson: merging these would lose knowledge.
const DISTINCT: &[(&str, &str)] = &[
    (
        "Keep a safe following distance of at least two seconds.",
        "Keep at least one car length of space when stopped in traffic.",
    ),
    (
        "Move to the exit lane early instead of at the last moment.",
        "Take the second exit for the airport, not the first.",
    ),
    (
        "Check the gap behind before changing lanes.",
        "Signal for three seconds before changing lanes.",
    ),
    (
        "Slow down when the car ahead brakes suddenly.",
        "Speed up slightly to let a merging truck in behind you.",
    ),
    (
        "Do not overtake on the right side.",
        "Overtake slow trucks before the road narrows to one lane.",
    ),
    (
        "The left lane is usually faster than the right lane.",
        "The right lane ends two kilometres before the tunnel.",
    ),
    (
        "Braking hard on an empty road wastes time.",
        "Brake gently on wet roads to avoid skidding.",
    ),
    (
        "Keep your lane when the adjacent lanes are congested.",
        "Switch to the middle lane when the right lane is blocked by an accident.",
    ),
    (
        "Match the speed of traffic when merging onto the highway.",
        "The speed limit on the highway is 130 km/h in dry weather.",
    ),
    (
        "Headlights must be on in tunnels.",
        "Tunnels have no emergency lane.",
    ),
    (
        "Apologise to the customer before explaining the fix.",
        "Explain the fix in numbered steps.",
    ),
    (
        "Ask for the order number before looking up a refund.",
        "Refunds take five business days to reach the customer's card.",
    ),
    (
        "Escalate to a human agent when the customer asks twice.",
        "Human agents are available from 8am to 8pm on weekdays.",
    ),
    (
        "Refunds above one hundred dollars need manager approval.",
        "Store credit can be issued without approval up to 50 dollars.",
    ),
    (
        "Do not promise delivery dates the warehouse has not confirmed.",
        "Express delivery costs 15 dollars extra.",
    ),
    (
        "Confirm the customer's identity before changing account details.",
        "Customers can change their email address from the settings page.",
    ),
    (
        "Close the ticket only after the customer confirms the issue is solved.",
        "Tag every ticket with the product it concerns.",
    ),
    (
        "Offer a discount code when an order arrives damaged.",
        "Ask for a photo when an order arrives damaged.",
    ),
    (
        "Roll back the latest deploy when errors spike right after it.",
        "Deploys are frozen on Fridays after 3pm.",
    ),
    (
        "Check disk usage before restarting a database.",
        "Take a snapshot of the database before running migrations.",
    ),
    (
        "Do not restart all pods at the same time.",
        "Pods are restarted automatically when their health check fails.",
    ),
    (
        "Page the on-call engineer when latency stays high for ten minutes.",
        "Latency dashboards live in the performance folder of Grafana.",
    ),
    (
        "Read the error logs before changing any configuration.",
        "Configuration changes go through a pull request.",
    ),
    (
        "Scale out the web tier when CPU stays above ninety percent.",
        "Scale in the batch workers at night to save cost.",
    ),
    (
        "Silence duplicate alerts during an incident to reduce noise.",
        "Write a postmortem within two days of every incident.",
    ),
    (
        "Ask for tests when a pull request changes behaviour.",
        "Integration tests run only on the main branch.",
    ),
    (
        "Flag unchecked error returns in Go code.",
        "Go code must be formatted with gofmt.",
    ),
    (
        "Prefer small pull requests that do one thing.",
        "Pull requests need two approvals before merging.",
    ),
    (
        "Reject secrets committed to the repository.",
        "Rotate a secret immediately after it leaks.",
    ),
    (
        "Suggest renaming variables whose names do not explain them.",
        "Public functions need doc comments.",
    ),
    (
        "Check that new database queries use an index.",
        "Database migrations must be reversible.",
    ),
    (
        "Approve only after the continuous integration checks pass.",
        "Re-run flaky CI jobs at most once.",
    ),
];

#[tokio::test]
async fn merge_precision_and_recall_at_the_default_threshold() {
    assert!(PARAPHRASES.len() >= 30 && DISTINCT.len() >= 30);
    let dir = tempfile::tempdir().unwrap();
    let c = curator_in(dir.path()).await;
    let mut merged_paraphrases = 0usize;
    let mut merged_distinct = 0usize;
    let mut scored: Vec<(f32, bool)> = Vec::new();
    for (label, pairs) in [(true, PARAPHRASES), (false, DISTINCT)] {
        for (i, (first, second)) in pairs.iter().enumerate() {
            let ns = format!("dq-{}-{i}", if label { "p" } else { "d" });
            c.curate(&ns, &[insight("first", "strategy", first)])
                .await
                .unwrap();
            let op = c
                .curate(&ns, &[insight("second", "strategy", second)])
                .await
                .unwrap()
                .remove(0);
            let merged = op.kind == DeltaKind::Merge;
            scored.push((op.similarity, label));
            if merged && label {
                merged_paraphrases += 1;
            } else if merged {
                merged_distinct += 1;
            }
            if merged != label {
                println!(
                    "miss (sim {:.3}, paraphrase {label}): {first:?} / {second:?}",
                    op.similarity
                );
            }
        }
    }
    let merges = merged_paraphrases + merged_distinct;
    let precision = if merges == 0 {
        0.0
    } else {
        merged_paraphrases as f64 / merges as f64
    };
    let recall = merged_paraphrases as f64 / PARAPHRASES.len() as f64;
    println!(
        "dedup at threshold 0.80: {} paraphrase pairs, {} distinct pairs; MERGE precision {:.3}, recall {:.3}",
        PARAPHRASES.len(),
        DISTINCT.len(),
        precision,
        recall
    );
    // Where other thresholds would land on this set, for choosing `curator.merge_threshold`.
    for t in [0.60f32, 0.65, 0.70, 0.75, 0.80, 0.85] {
        let tp = scored.iter().filter(|(s, l)| *l && *s >= t).count();
        let fp = scored.iter().filter(|(s, l)| !*l && *s >= t).count();
        let p = if tp + fp == 0 {
            0.0
        } else {
            tp as f64 / (tp + fp) as f64
        };
        println!(
            "  threshold {t:.2}: precision {p:.3}, recall {:.3}",
            tp as f64 / PARAPHRASES.len() as f64
        );
    }
    // Floors a little under what the model measures here, so a regression in pooling,
    // tokenisation or the threshold logic fails this test.
    assert!(precision >= 0.95, "precision {precision:.3}");
    assert!(recall >= 0.40, "recall {recall:.3}");
}
