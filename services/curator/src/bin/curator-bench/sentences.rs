//! Written insights for `--minilm`: sentences about a place, a condition, an action preferred
//! to another and a reason, picked by a hash of the insight's number, each with a paraphrase
//! (other words and another sentence shape for the same slots). Their MiniLM vectors cluster as
//! a real playbook's do: bullets that share a place, a condition or an action are near each
//! other, a restatement is nearer still.

use agent_learning_domain::Insight;

use super::SECTIONS;

const PLACES: [&str; 24] = [
    "at the four-way junction",
    "on the highway on-ramp",
    "near the school zone",
    "in the underground car park",
    "on the roundabout",
    "at the pedestrian crossing",
    "on the checkout page",
    "on the login form",
    "in the search results",
    "on the account settings screen",
    "in the shopping cart",
    "in the inbox",
    "in the warehouse aisle",
    "at the loading dock",
    "in the kitchen",
    "beside the locked cabinet",
    "in the dark corridor",
    "at the control panel",
    "in the terminal session",
    "in the build log",
    "on the map's northern edge",
    "in the inventory screen",
    "at the bank counter",
    "in the support chat",
];

/// (as first written, as restated)
const CONDITIONS: [(&str, &str); 32] = [
    ("the light turns amber", "the signal changes to yellow"),
    ("a pedestrian is waiting", "someone stands at the kerb"),
    ("the road is wet", "it has been raining"),
    ("a truck blocks the view", "a lorry hides the road ahead"),
    ("the lane ends ahead", "the lane is about to merge"),
    ("traffic is backed up", "the cars ahead are queued"),
    ("the speed limit drops", "a lower limit is posted"),
    ("a cyclist is alongside", "a bike rides next to the car"),
    (
        "the page has not finished loading",
        "the screen is still loading",
    ),
    ("an error banner is shown", "a red warning appears"),
    ("the password was rejected twice", "two logins have failed"),
    ("the cart is empty", "no items have been added"),
    (
        "the filter hides every result",
        "no result passes the filters",
    ),
    ("the session has expired", "the login timed out"),
    ("a required field is blank", "a mandatory input is missing"),
    ("the button is greyed out", "the control is disabled"),
    ("the shelf label is missing", "the item has no tag"),
    (
        "the box is heavier than expected",
        "the package weighs too much",
    ),
    ("the door is locked", "the door will not open"),
    ("the key is not in the inventory", "the agent lacks the key"),
    ("the pan is already hot", "the stove has been heating"),
    ("the lamp is off", "the room is unlit"),
    ("the test suite fails", "some tests are red"),
    ("the command hangs", "the process stops responding"),
    ("the disk is nearly full", "storage is running out"),
    ("the compass points south", "the heading is southward"),
    ("the health bar is low", "the character is badly hurt"),
    (
        "the customer asks for a refund",
        "the buyer wants the money back",
    ),
    (
        "the form was submitted twice",
        "the order went through two times",
    ),
    ("the balance is negative", "the account is overdrawn"),
    ("the user writes in French", "the message is in French"),
    (
        "the battery is below ten percent",
        "the charge is almost gone",
    ),
];

/// (as first written, as restated)
const ACTIONS: [(&str, &str); 48] = [
    ("slow down early", "reduce speed in good time"),
    ("stop behind the line", "halt before the stop line"),
    ("check the mirrors", "look in the mirrors"),
    ("change to the left lane", "move over to the left"),
    ("keep a longer gap", "leave more distance to the car ahead"),
    ("yield to the other driver", "give way to the other car"),
    ("signal before turning", "indicate ahead of the turn"),
    ("wait for a clear gap", "hold until there is space"),
    ("accelerate smoothly", "speed up gently"),
    ("sound the horn", "honk"),
    ("reload the page", "refresh the screen"),
    (
        "scroll down to the footer",
        "move to the bottom of the page",
    ),
    ("open the filter menu", "expand the filters"),
    ("clear the search box", "empty the query field"),
    ("submit the form", "send the form"),
    ("reset the password", "ask for a new password"),
    ("add the item to the cart", "put the product in the basket"),
    ("apply the discount code", "enter the coupon"),
    ("log out and back in", "sign out and sign in again"),
    ("read the error message", "look at what the warning says"),
    (
        "pick up the box with both hands",
        "lift the package with two hands",
    ),
    ("scan the barcode", "read the item's code with the scanner"),
    ("ask a colleague for help", "call a coworker over"),
    (
        "put the item back on the shelf",
        "return the product to its rack",
    ),
    (
        "search the drawer for the key",
        "look for the key in the drawer",
    ),
    ("turn on the lamp", "switch the light on"),
    ("open the door", "unlock and open the door"),
    ("go back to the previous room", "return to the room before"),
    (
        "take the knife from the counter",
        "grab the knife on the worktop",
    ),
    ("lower the heat", "turn the stove down"),
    ("wash the pan first", "clean the pan beforehand"),
    ("examine the object closely", "look carefully at the thing"),
    (
        "rerun the failing test alone",
        "run just the broken test again",
    ),
    (
        "read the last lines of the log",
        "look at the end of the log",
    ),
    ("kill the hung process", "terminate the stuck command"),
    ("delete temporary files", "remove the scratch files"),
    (
        "pin the dependency version",
        "fix the library at one version",
    ),
    ("restart the service", "bring the service up again"),
    ("head north along the river", "follow the river northward"),
    ("drink a healing potion", "use a health potion"),
    ("retreat to the camp", "fall back to the base"),
    ("save the game", "store a save point"),
    (
        "apologise and confirm the order number",
        "say sorry and check the order id",
    ),
    ("escalate to a human agent", "hand the case to a person"),
    (
        "answer in the customer's language",
        "reply in the language the user wrote in",
    ),
    (
        "refund the duplicate charge",
        "return the money charged twice",
    ),
    ("verify the account holder", "check the caller's identity"),
    ("summarise the steps taken", "recap what was done"),
];

/// (as first written, as restated)
const REASONS: [(&str, &str); 32] = [
    ("it avoids a collision", "a crash is less likely"),
    (
        "the other car may not stop",
        "the other driver might not brake",
    ),
    (
        "braking late skids on this surface",
        "hard stops slide here",
    ),
    ("it keeps the route legal", "the rules require it"),
    ("it saves a wasted step", "one action fewer is needed"),
    (
        "the next state shows the goal",
        "the target becomes visible",
    ),
    (
        "the task resets otherwise",
        "failing starts the episode over",
    ),
    ("the expert always did this", "every demonstration does it"),
    ("it reveals the hidden option", "the missing choice appears"),
    ("the page state is stale", "the screen shows old data"),
    ("the server rejects repeats", "duplicates are refused"),
    (
        "the limit is enforced per session",
        "the cap counts per login",
    ),
    (
        "it protects the customer's data",
        "the user's information stays safe",
    ),
    (
        "the order cannot be changed later",
        "edits are impossible afterwards",
    ),
    (
        "dropping it breaks the contents",
        "a fall would damage what is inside",
    ),
    (
        "the scanner needs a clear view",
        "the reader must see the code",
    ),
    (
        "the key only fits that door",
        "no other lock takes that key",
    ),
    (
        "the recipe needs it first",
        "the dish requires that step before",
    ),
    ("food burns at full heat", "high heat scorches the food"),
    (
        "the room holds the needed object",
        "what is needed is in that room",
    ),
    (
        "it shows which test is flaky",
        "the unreliable test is found",
    ),
    (
        "the log names the real cause",
        "the root cause is in the log",
    ),
    (
        "a stuck process holds the lock",
        "the frozen job keeps the lock",
    ),
    (
        "the build needs free space",
        "compiling requires disk space",
    ),
    (
        "newer versions changed the API",
        "the interface differs in later releases",
    ),
    ("enemies gather at night", "monsters come out after dark"),
    (
        "losing progress costs many steps",
        "an unsaved death repeats a lot of work",
    ),
    (
        "the map's exit lies that way",
        "the way out is in that direction",
    ),
    ("angry customers leave", "an upset buyer does not return"),
    (
        "policy requires a person for this",
        "the rules demand a human here",
    ),
    (
        "charging twice breaks trust",
        "a double charge loses the customer",
    ),
    (
        "the next agent needs the context",
        "whoever picks it up needs the history",
    ),
];

/// A number mixed into well-spread bits (splitmix64).
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The slots of insight `i` of the series `prefix`: place, condition, action, the action it
/// is preferred to, reason, sentence shape.
fn slots(prefix: &str, i: usize) -> [usize; 6] {
    let series = prefix.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let mut h = mix(series ^ i as u64);
    let mut pick = |n: usize| {
        h = mix(h);
        (h % n as u64) as usize
    };
    let action = pick(ACTIONS.len());
    let other = (action + 1 + pick(ACTIONS.len() - 1)) % ACTIONS.len();
    [
        pick(PLACES.len()),
        pick(CONDITIONS.len()),
        action,
        other,
        pick(REASONS.len()),
        pick(3),
    ]
}

fn sentence(prefix: &str, i: usize, restated: bool) -> String {
    let [p, c, a, o, r, shape] = slots(prefix, i);
    let place = PLACES[p];
    let pick = |pair: (&'static str, &'static str)| if restated { pair.1 } else { pair.0 };
    let (cond, act, reason) = (pick(CONDITIONS[c]), pick(ACTIONS[a]), pick(REASONS[r]));
    let other = ACTIONS[o].0;
    match (shape, restated) {
        (0, false) => format!("When {cond} {place}, {act} instead of trying to {other}: {reason}."),
        (0, true) => {
            format!("Prefer to {act} over trying to {other} {place} once {cond}, since {reason}.")
        }
        (1, false) => format!(
            "Observed {place}: if {cond}, the agent should {act} and not {other}, because {reason}."
        ),
        (1, true) => {
            format!("If {cond} {place}, it works better to {act} than to {other}; {reason}.")
        }
        (_, false) => format!(
            "Mistake to avoid {place}: trying to {other} when {cond}; {act} first, as {reason}."
        ),
        (_, true) => {
            format!("Do not {other} {place} while {cond}: {act} beforehand because {reason}.")
        }
    }
}

/// Insights `from..from + n` of the series `prefix` (the same numbers give the same texts).
pub fn insights(prefix: &str, from: usize, n: usize) -> Vec<Insight> {
    (from..from + n)
        .map(|i| Insight {
            id: format!("{prefix}-{i}"),
            section: SECTIONS[i % 3].into(),
            content: sentence(prefix, i, false),
            source: "bench".into(),
        })
        .collect()
}

/// Insight `i` of the series `prefix` in other words.
pub fn paraphrase(prefix: &str, i: usize) -> String {
    sentence(prefix, i, true)
}
