//! The escalation ladder (spec 5.2), in one place: which local step a category offers next,
//! when Krako Cloud may be added, and what an offer changes.

use kora_model::Category;
use serde::{Deserialize, Serialize};

/// The ladder step of Krako Cloud.
pub const CLOUD_STEP: u8 = 4;
/// The option id of Krako Cloud.
pub const CLOUD_OPTION: &str = "cloud";

/// Where the escalation ladder of one category and scope stands.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Ladder {
    /// Local steps offered, in order.
    pub offered: Vec<u8>,
    pub cloud_offered: bool,
    /// The trigger fired again after a local step was offered.
    pub fired_again: bool,
    /// A suggestion of this scope was dismissed.
    pub dismissed: bool,
    /// The user insisted on the same tier.
    pub insisted: bool,
}

impl Ladder {
    /// The next local step that applies to `category` and was not offered yet; when all
    /// were, the last one again.
    pub fn next_local(&self, category: Category) -> (u8, &'static str) {
        let steps = local_steps(category);
        steps
            .iter()
            .find(|(s, _)| !self.offered.contains(s))
            .or(steps.last())
            .copied()
            .unwrap_or((1, "smaller_model"))
    }

    /// Krako Cloud may be offered: a local step was offered for the scope, and then the
    /// trigger fired again, a suggestion was dismissed, or the user insisted on the same tier.
    pub fn cloud_open(&self) -> bool {
        !self.offered.is_empty() && (self.fired_again || self.dismissed || self.insisted)
    }

    /// A firing of the scope: after a local step it counts as "fired again".
    pub fn on_firing(&mut self) {
        if !self.offered.is_empty() {
            self.fired_again = true;
        }
    }

    /// A suggestion was shown with `local_option` (and the cloud option when `cloud`).
    pub fn on_offer(&mut self, local_option: &str, cloud: bool) {
        if let Some(step) = step_of_option(local_option)
            && !self.offered.contains(&step)
        {
            self.offered.push(step);
        }
        if cloud {
            self.cloud_offered = true;
        }
        self.fired_again = false;
    }
}

/// The local steps that apply to a category, in the order they are offered: (ladder step,
/// option id). See the crate documentation for why.
pub fn local_steps(category: Category) -> &'static [(u8, &'static str)] {
    match category {
        Category::ModelFit => &[(1, "smaller_model"), (3, "lower_context")],
        Category::Context => &[(3, "lower_context")],
        Category::Latency => &[(2, "deterministic_filtering"), (1, "smaller_model")],
        Category::Concurrency => &[(3, "lower_context"), (1, "smaller_model")],
        Category::Reliability => &[(1, "stronger_local_model"), (2, "deterministic_filtering")],
    }
}

/// The ladder step of an option id: step 1 is the choice of local model (smaller or
/// quantized, or for reliability a stronger one), 2 deterministic filtering, 3 a lower
/// context, 4 Krako Cloud.
pub fn step_of_option(id: &str) -> Option<u8> {
    match id {
        "smaller_model" | "stronger_local_model" => Some(1),
        "deterministic_filtering" => Some(2),
        "lower_context" => Some(3),
        CLOUD_OPTION => Some(CLOUD_STEP),
        _ => None,
    }
}

/// What a local option asks the user to try (the `{local_mitigation}` of the message).
pub fn local_label(id: &str) -> &'static str {
    match id {
        "smaller_model" => "a smaller or quantized local model",
        "stronger_local_model" => {
            "a stronger local model (larger or less quantized) that still fits this machine"
        }
        "deterministic_filtering" => "more deterministic filtering before the model stage",
        "lower_context" => "a lower context mode (a shorter context or summarization)",
        _ => "a local mitigation",
    }
}
