//! The closest existing name to one a user gave that does not exist (a misspelt table, topic,
//! job or schedule), so that the error can say what was probably meant.

/// Least similarity (normalized Levenshtein, 1.0 for equal names) a name must have to be offered:
/// DataFusion's threshold for column names, so tables and columns are suggested alike.
const MIN_SIMILARITY: f64 = 0.5;

/// The name among `candidates` closest to `name`: one equal ignoring case first, else the most
/// similar with at least half its characters in common; the first in the order given among equals.
pub fn closest<'a, I>(name: &str, candidates: I) -> Option<&'a str>
where
    I: IntoIterator<Item = &'a str>,
{
    let mut best: Option<(f64, &'a str)> = None;
    let lower = name.to_lowercase();
    for c in candidates {
        if c == name {
            continue;
        }
        let score = if c.to_lowercase() == lower {
            // Above any score of a different spelling.
            2.0
        } else {
            strsim::normalized_levenshtein(&lower, &c.to_lowercase())
        };
        if score >= MIN_SIMILARITY && best.is_none_or(|(b, _)| score > b) {
            best = Some((score, c));
        }
    }
    best.map(|(_, c)| c)
}

/// `"; did you mean 'x'?"` naming the closest of `candidates` to `name`, or nothing when none is
/// close: to be appended to a "does not exist" message.
pub fn did_you_mean<'a, I>(name: &str, candidates: I) -> String
where
    I: IntoIterator<Item = &'a str>,
{
    match closest(name, candidates) {
        Some(c) => format!("; did you mean '{c}'?"),
        None => String::new(),
    }
}

/// "`what` '`name`' does not exist", naming the closest of `candidates` when one is close: the
/// one wording of a missing table, topic, job or schedule, wherever it is looked up.
pub fn does_not_exist<'a, I>(what: &str, name: &str, candidates: I) -> String
where
    I: IntoIterator<Item = &'a str>,
{
    format!(
        "{what} '{name}' does not exist{}",
        did_you_mean(name, candidates)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_closest_spelling_is_offered_and_unrelated_names_are_not() {
        let names = ["pages", "clicks", "clicks.dlq", "Orders", "page_views"];
        assert_eq!(closest("pagez", names), Some("pages"));
        assert_eq!(closest("clikcs", names), Some("clicks"));
        assert_eq!(closest("clicks_dlq", names), Some("clicks.dlq"));
        // A name equal ignoring case wins over any other spelling.
        assert_eq!(closest("orders", names), Some("Orders"));
        assert_eq!(closest("customers", names), None);
        assert_eq!(closest("x", names), None);
        assert_eq!(closest("pagez", []), None);
        // The name itself is not offered (it exists, or the caller looked it up another way).
        assert_eq!(closest("pages", ["pages"]), None);
        assert_eq!(did_you_mean("pagez", names), "; did you mean 'pages'?");
        assert_eq!(did_you_mean("zzz", names), "");
        assert_eq!(
            does_not_exist("table", "pagez", names),
            "table 'pagez' does not exist; did you mean 'pages'?"
        );
    }
}
