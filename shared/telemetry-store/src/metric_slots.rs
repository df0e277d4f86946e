//! Numbering the metrics of a read by first appearance, cheaply: what pages and aggregations
//! use to keep something per metric without hashing or comparing names per sample.

use std::sync::Arc;

/// Numbers metrics in order of first appearance. The samples of one read share one name per
/// metric (the reader interns them) and mostly come round in turn, so the slot after the last
/// one, then any pointer match, is nearly always the answer before a name is compared; names
/// that are equal but not shared still get one slot.
#[derive(Debug, Clone, Default)]
pub struct MetricSlots {
    names: Vec<Arc<str>>,
    last: usize,
}

impl MetricSlots {
    /// The slot of `metric`: its index among the distinct names seen so far, or the next index
    /// when it is new.
    pub fn slot(&mut self, metric: &Arc<str>) -> usize {
        let count = self.names.len();
        let guess = if self.last + 1 < count {
            self.last + 1
        } else {
            0
        };
        let found = (0..count)
            .map(|offset| (guess + offset) % count)
            .find(|&slot| Arc::ptr_eq(&self.names[slot], metric))
            .or_else(|| self.names.iter().position(|name| **name == **metric));
        let slot = found.unwrap_or_else(|| {
            self.names.push(Arc::clone(metric));
            count
        });
        self.last = slot;
        slot
    }

    /// The names, slot by slot.
    pub fn names(&self) -> &[Arc<str>] {
        &self.names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_number_names_not_pointers() {
        let a = Arc::<str>::from("A");
        let b = Arc::<str>::from("B");
        let mut slots = MetricSlots::default();
        let seen: Vec<usize> = [
            &a,
            &b,
            &a,
            &Arc::from("B"),
            &Arc::from("C"),
            &b,
            &Arc::from("A"),
        ]
        .into_iter()
        .map(|metric| slots.slot(metric))
        .collect();
        assert_eq!(seen, [0, 1, 0, 1, 2, 1, 0]);
        let names: Vec<&str> = slots.names().iter().map(|name| &**name).collect();
        assert_eq!(names, ["A", "B", "C"]);
    }
}
