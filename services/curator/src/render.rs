//! Rendering bullets as a playbook section within a token budget.

use agent_learning_domain::{Bullet, estimate_tokens};

/// Ranking score: relevance to the state, weighted by the bullet's track record (Laplace-
/// smoothed helpful rate, so an unrated bullet scores as neutral).
pub fn score(similarity: f32, b: &Bullet) -> f32 {
    let quality = (b.helpful as f32 + 1.0) / ((b.helpful + b.harmful) as f32 + 2.0);
    similarity * (0.75 + 0.5 * quality)
}

fn render(sections: &[String], chosen: &[&Bullet]) -> String {
    if chosen.is_empty() {
        return String::new();
    }
    let mut out = String::from("## Playbook\n");
    for section in sections {
        let mut first = true;
        for b in chosen.iter().filter(|b| &b.section == section) {
            if first {
                out.push_str("### ");
                out.push_str(section);
                out.push('\n');
                first = false;
            }
            let id = b.id.simple().to_string();
            out.push_str(&format!("- [{}] {}\n", &id[..8], b.content.trim()));
        }
    }
    out
}

/// Picks bullets in `ranked` order (best first) while the rendered text fits `budget` tokens;
/// a bullet that does not fit is skipped so a shorter one after it may still fit.
pub fn fit<'a>(
    sections: &[String],
    ranked: &'a [Bullet],
    budget: u32,
) -> (String, Vec<&'a Bullet>, u32) {
    let mut chosen: Vec<&'a Bullet> = Vec::new();
    let mut text = String::new();
    for b in ranked {
        chosen.push(b);
        let candidate = render(sections, &chosen);
        if estimate_tokens(&candidate) <= budget {
            text = candidate;
        } else {
            chosen.pop();
        }
    }
    let tokens = estimate_tokens(&text);
    (text, chosen, tokens)
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_learning_domain::Stage;

    fn bullet(section: &str, content: &str) -> Bullet {
        Bullet {
            id: uuid::Uuid::new_v4(),
            namespace: "t".into(),
            section: section.into(),
            content: content.into(),
            helpful: 0,
            harmful: 0,
            evidence: 1,
            stage: Stage::Shadow,
            sources: vec![],
            deleted: false,
            created_at: chrono::Utc::now(),
            updated_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn never_exceeds_the_budget() {
        let sections = vec!["strategy".to_string(), "facts".to_string()];
        let ranked: Vec<Bullet> = (0..40)
            .map(|i| {
                bullet(
                    if i % 2 == 0 { "strategy" } else { "facts" },
                    &"word ".repeat(1 + (i * 7) % 23),
                )
            })
            .collect();
        for budget in [0, 5, 17, 40, 100, 333, 10_000] {
            let (text, chosen, tokens) = fit(&sections, &ranked, budget);
            assert!(tokens <= budget, "budget {budget}: {tokens}");
            assert_eq!(tokens, estimate_tokens(&text));
            if budget >= 10_000 {
                assert_eq!(chosen.len(), ranked.len());
            }
        }
    }

    #[test]
    fn skips_a_long_bullet_for_a_short_one() {
        let sections = vec!["facts".to_string()];
        let ranked = vec![
            bullet("facts", &"long ".repeat(200)),
            bullet("facts", "short"),
        ];
        let (text, chosen, _) = fit(&sections, &ranked, 30);
        assert_eq!(chosen.len(), 1);
        assert!(text.contains("short"));
    }

    #[test]
    fn track_record_breaks_ties() {
        let mut good = bullet("facts", "a");
        good.helpful = 5;
        let mut bad = bullet("facts", "b");
        bad.harmful = 5;
        assert!(score(0.7, &good) > score(0.7, &bad));
    }
}
