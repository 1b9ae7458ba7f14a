//! The `nofilter` filter: does nothing.  It exists to measure what a filter
//! layer costs, and to stand in for a filter in scripts that always want one.
//!
//! It is [`Filter::transparent`]: its backend hands out the next layer's
//! context unchanged, so requests through it cost nothing at all (with
//! `-v` the tracer still shows a `nofilter:` line for every call).

use crate::filter::Filter;

#[derive(Default)]
pub struct NoFilter;

impl NoFilter {
    pub fn new() -> Self {
        NoFilter
    }
}

impl Filter for NoFilter {
    fn name(&self) -> &'static str {
        "nofilter"
    }

    fn longname(&self) -> Option<&'static str> {
        Some("nbdkit nofilter filter")
    }

    fn description(&self) -> &'static str {
        "A filter that does nothing."
    }

    fn quick_requests(&self) -> bool {
        true
    }

    fn transparent(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_no_parameter() {
        let mut f = NoFilter::new();
        assert!(!f.config("size", "1M").unwrap());
        assert!(f.transparent());
    }
}
