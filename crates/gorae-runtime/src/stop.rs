//! Stop strings over streamed text: text that might be the start of a stop string is held back
//! until it is known not to be, so a caller never prints half of a stop string.

pub struct StopMatcher {
    stops: Vec<String>,
    pending: String,
}

/// What to do with the text fed so far.
#[derive(Debug, PartialEq, Eq)]
pub enum StopOutcome {
    /// Emit this text and continue.
    Continue(String),
    /// Emit this text (what precedes the stop string) and stop.
    Stop(String),
}

impl StopMatcher {
    pub fn new(stops: Vec<String>) -> Self {
        StopMatcher {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            pending: String::new(),
        }
    }

    pub fn push(&mut self, piece: &str) -> StopOutcome {
        self.pending.push_str(piece);
        let first_stop = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()))
            .min();
        if let Some(at) = first_stop {
            let out = self.pending[..at].to_string();
            self.pending.clear();
            return StopOutcome::Stop(out);
        }
        // Hold back the longest suffix that is a proper prefix of some stop string.
        let mut hold = 0;
        for s in &self.stops {
            for (i, _) in s.char_indices().skip(1) {
                if self.pending.ends_with(&s[..i]) {
                    hold = hold.max(i);
                }
            }
        }
        let cut = self.pending.len() - hold;
        let out = self.pending[..cut].to_string();
        self.pending.drain(..cut);
        StopOutcome::Continue(out)
    }

    /// Text still held back, at the end of generation.
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_back_partial_matches_and_stops() {
        let mut m = StopMatcher::new(vec!["\nUser:".into()]);
        assert_eq!(m.push("Hello"), StopOutcome::Continue("Hello".into()));
        assert_eq!(m.push(" there\nUs"), StopOutcome::Continue(" there".into()));
        assert_eq!(m.push("ually"), StopOutcome::Continue("\nUsually".into()));
        assert_eq!(m.push("\nUser: hi"), StopOutcome::Stop(String::new()));
    }

    #[test]
    fn stop_inside_a_piece_keeps_the_text_before() {
        let mut m = StopMatcher::new(vec!["END".into(), "###".into()]);
        assert_eq!(m.push("abc###dEND"), StopOutcome::Stop("abc".into()));
        let mut m = StopMatcher::new(vec!["é!".into()]);
        assert_eq!(m.push("caf"), StopOutcome::Continue("caf".into()));
        assert_eq!(m.push("é"), StopOutcome::Continue(String::new()));
        assert_eq!(m.flush(), "é");
    }
}
