//! Stop strings over streamed text: text is released as soon as it cannot be the start of a
//! stop string, and generation ends at the first complete one (which is not sent).

/// Finds the first occurrence of any stop string in text that arrives piece by piece.
#[derive(Debug, Default, Clone)]
pub struct StopMatcher {
    stops: Vec<String>,
    /// Text received but not yet released: a suffix that may begin a stop string.
    held: String,
}

impl StopMatcher {
    /// A matcher for `stops` (empty strings are ignored: they would match everywhere).
    pub fn new(stops: impl IntoIterator<Item = String>) -> Self {
        Self {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            held: String::new(),
        }
    }

    /// Adds `text`; appends what is safe to release to `out`. Returns true when a stop string
    /// is complete: `out` then ends right before it and everything after it is dropped.
    pub fn push(&mut self, text: &str, out: &mut String) -> bool {
        if self.stops.is_empty() {
            out.push_str(text);
            return false;
        }
        self.held.push_str(text);
        let first = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min();
        if let Some(at) = first {
            out.push_str(&self.held[..at]);
            self.held.clear();
            return true;
        }
        // Hold back the longest suffix that is a proper prefix of some stop string.
        let keep = self
            .held
            .char_indices()
            .map(|(i, _)| i)
            .find(|&i| {
                let tail = &self.held[i..];
                self.stops.iter().any(|s| s.starts_with(tail))
            })
            .unwrap_or(self.held.len());
        out.push_str(&self.held[..keep]);
        self.held.drain(..keep);
        false
    }

    /// Releases the held text (the generation ended without completing a stop string).
    pub fn finish(&mut self, out: &mut String) {
        out.push_str(&self.held);
        self.held.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `pieces`, returns (released text, whether it stopped).
    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut m = StopMatcher::new(stops.iter().map(|s| s.to_string()));
        let mut out = String::new();
        for p in pieces {
            if m.push(p, &mut out) {
                return (out, true);
            }
        }
        m.finish(&mut out);
        (out, false)
    }

    #[test]
    fn stops_at_the_first_complete_stop_string_across_pieces() {
        assert_eq!(
            run(&["END"], &["hello E", "N", "D more"]),
            ("hello ".into(), true)
        );
        assert_eq!(run(&["b", "ab"], &["xab"]), ("x".into(), true));
        assert_eq!(run(&["\n\n"], &["a\n", "\nb"]), ("a".into(), true));
    }

    #[test]
    fn a_near_miss_is_released() {
        assert_eq!(run(&["END"], &["E", "N", "d"]), ("ENd".into(), false));
        assert_eq!(run(&["END"], &["xEN"]), ("xEN".into(), false));
        assert_eq!(run(&[], &["a", "b"]), ("ab".into(), false));
    }

    #[test]
    fn held_text_is_only_what_could_start_a_stop() {
        let mut m = StopMatcher::new(["<|im_end|>".to_string()]);
        let mut out = String::new();
        assert!(!m.push("Hi <|im", &mut out));
        assert_eq!(out, "Hi ");
        assert!(!m.push("_x", &mut out));
        assert_eq!(out, "Hi <|im_x");
        assert!(!m.push("é<", &mut out));
        assert_eq!(out, "Hi <|im_xé");
        assert!(m.push("|im_end|>tail", &mut out));
        assert_eq!(out, "Hi <|im_xé");
    }

    /// Against a plain search over each received prefix, for many random splits: generation
    /// stops at the first piece after which some stop string is present, cut at the earliest
    /// occurrence; without one, everything is released.
    #[test]
    fn matches_a_search_over_each_prefix_for_random_splits() {
        let mut rng = crate::decode::sampler::Rng::new(7);
        let alphabet = ['a', 'b', 'é', '\n'];
        for _ in 0..3000 {
            let len = rng.next_u32() as usize % 12;
            let text: String = (0..len)
                .map(|_| alphabet[rng.next_u32() as usize % alphabet.len()])
                .collect();
            let stops: Vec<String> = (0..1 + rng.next_u32() % 2)
                .map(|_| {
                    (0..1 + rng.next_u32() % 3)
                        .map(|_| alphabet[rng.next_u32() as usize % alphabet.len()])
                        .collect()
                })
                .collect();
            let chars: Vec<char> = text.chars().collect();
            let mut pieces = Vec::new();
            let mut i = 0;
            while i < chars.len() {
                let n = 1 + rng.next_u32() as usize % 3;
                pieces.push(
                    chars[i..(i + n).min(chars.len())]
                        .iter()
                        .collect::<String>(),
                );
                i += n;
            }
            let mut want = (text.clone(), false);
            let mut prefix = String::new();
            for p in &pieces {
                prefix.push_str(p);
                if let Some(at) = stops.iter().filter_map(|s| prefix.find(s.as_str())).min() {
                    want = (prefix[..at].to_string(), true);
                    break;
                }
            }
            let refs: Vec<&str> = pieces.iter().map(String::as_str).collect();
            let stop_refs: Vec<&str> = stops.iter().map(String::as_str).collect();
            assert_eq!(
                run(&stop_refs, &refs),
                want,
                "text {text:?} pieces {pieces:?} stops {stops:?}"
            );
        }
    }
}
