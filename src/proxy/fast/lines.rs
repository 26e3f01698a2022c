//! A header section edited the way pingora edits its case-preserving headers, so that the
//! fast path writes the very bytes the slow path writes.
//!
//! pingora keeps a head in two `http::HeaderMap`s (values, and the names as written) and
//! serializes them in map order. That order is not the order of the lines: every value of a
//! name is written with the name's first line, an `insert` replaces a name's values where the
//! name first was, and a `remove` moves the *last* name into the removed one's place
//! (`HeaderMap` removes with `swap_remove`). [`Lines`] applies the same three operations to
//! borrowed lines, in one flat `Vec` (a name's lines stay adjacent), so that
//! `fuzz/fuzz_targets/fast_path.rs` can require byte equality with the slow path.

/// One header line: the name as it is written, and the value.
pub type Line<'a> = (&'a [u8], &'a [u8]);

/// Header lines in pingora's serialization order.
#[derive(Default)]
pub struct Lines<'a> {
    lines: Vec<Line<'a>>,
}

fn same(a: &[u8], b: &[u8]) -> bool {
    a.eq_ignore_ascii_case(b)
}

impl<'a> Lines<'a> {
    pub fn with_capacity(n: usize) -> Self {
        Lines {
            lines: Vec::with_capacity(n),
        }
    }

    /// The lines of `name`, as `(start, end)` in `self.lines`.
    fn group(&self, name: &[u8]) -> Option<(usize, usize)> {
        let start = self.lines.iter().position(|(n, _)| same(n, name))?;
        let len = self.lines[start..]
            .iter()
            .take_while(|(n, _)| same(n, name))
            .count();
        Some((start, start + len))
    }

    /// `append_header`: one more value of `name`, written after its other values.
    pub fn append(&mut self, name: &'a [u8], value: &'a [u8]) {
        match self.group(name) {
            Some((_, end)) => self.lines.insert(end, (name, value)),
            None => self.lines.push((name, value)),
        }
    }

    /// `insert_header`: `name`'s only value, where its first line was (else at the end),
    /// written as `name` is given.
    pub fn insert(&mut self, name: &'a [u8], value: &'a [u8]) {
        match self.group(name) {
            Some((start, end)) => {
                self.lines[start] = (name, value);
                self.lines.drain(start + 1..end);
            }
            None => self.lines.push((name, value)),
        }
    }

    /// `remove_header`: every value of `name` goes, and the last name's lines take its place.
    pub fn remove(&mut self, name: &[u8]) {
        let Some((start, end)) = self.group(name) else {
            return;
        };
        let last_name = self.lines[self.lines.len() - 1].0;
        let last = self.group(last_name).map_or(start, |(s, _)| s);
        if last == start {
            self.lines.truncate(start);
            return;
        }
        // The last name's lines move, in order, into the removed name's place.
        let moved: Vec<Line<'a>> = self.lines.drain(last..).collect();
        self.lines.splice(start..end, moved);
    }

    pub fn contains(&self, name: &[u8]) -> bool {
        self.lines.iter().any(|(n, _)| same(n, name))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Line<'a>> {
        self.lines.iter()
    }

    /// `name: value\r\n` for every line, in order.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        for (name, value) in &self.lines {
            out.extend_from_slice(name);
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::http::RequestHeader;

    /// The same operations on pingora's `RequestHeader` and on [`Lines`] write the same bytes.
    fn both(ops: &[(&str, &'static str, &'static str)]) {
        let mut head = RequestHeader::build("GET", b"/", None).unwrap();
        let mut lines = Lines::default();
        for &(op, name, value) in ops {
            match op {
                "append" => {
                    head.append_header(name.to_string(), value).unwrap();
                    lines.append(name.as_bytes(), value.as_bytes());
                }
                "insert" => {
                    head.insert_header(name.to_string(), value).unwrap();
                    lines.insert(name.as_bytes(), value.as_bytes());
                }
                _ => {
                    head.remove_header(name);
                    lines.remove(name.as_bytes());
                }
            }
        }
        let mut theirs = Vec::new();
        head.header_to_h1_wire(&mut theirs);
        let mut ours = Vec::new();
        lines.write_to(&mut ours);
        assert_eq!(
            String::from_utf8_lossy(&ours),
            String::from_utf8_lossy(&theirs),
            "{ops:?}"
        );
    }

    #[test]
    fn appends_group_a_name_with_its_first_line() {
        both(&[
            ("append", "A", "1"),
            ("append", "B", "2"),
            ("append", "a", "3"),
            ("append", "C", "4"),
        ]);
    }

    #[test]
    fn a_removal_moves_the_last_name_into_its_place() {
        both(&[
            ("append", "A", "1"),
            ("append", "B", "2"),
            ("append", "C", "3"),
            ("append", "D", "4"),
            ("append", "d", "5"),
            ("remove", "b", ""),
            ("remove", "x", ""),
            ("remove", "a", ""),
            ("append", "E", "6"),
            ("remove", "E", ""),
        ]);
    }

    #[test]
    fn an_insert_replaces_every_value_in_place_with_its_new_case() {
        both(&[
            ("append", "Host", "a"),
            ("append", "X", "1"),
            ("append", "host", "b"),
            ("append", "Y", "2"),
            ("insert", "HOST", "c"),
            ("insert", "Z", "3"),
            ("remove", "x", ""),
            ("insert", "z", "4"),
        ]);
    }

    #[test]
    fn removing_the_only_and_the_last_names() {
        both(&[("append", "A", "1"), ("remove", "A", "")]);
        both(&[
            ("append", "A", "1"),
            ("append", "B", "2"),
            ("append", "b", "3"),
            ("remove", "B", ""),
            ("append", "C", "4"),
        ]);
    }
}
