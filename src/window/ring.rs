//! The last W grid values of one series. Grows lazily up to W, so a series
//! with few points costs few bytes. Timestamps are not stored: on a regular
//! grid they follow from the newest bucket index.

/// Ring buffer of at most `cap` values.
#[derive(Debug, Clone, Default)]
pub struct Ring {
    values: Vec<f32>,
    /// Index of the oldest value once the ring is full.
    head: usize,
    cap: usize,
}

impl Ring {
    /// An empty ring of capacity `cap`.
    pub fn new(cap: usize) -> Self {
        Ring {
            values: Vec::new(),
            head: 0,
            cap: cap.max(1),
        }
    }

    /// Number of values held.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Forget every value (a reset after a long gap).
    pub fn clear(&mut self) {
        self.values.clear();
        self.head = 0;
    }

    /// Append a value, dropping the oldest when full.
    pub fn push(&mut self, v: f32) {
        if self.values.len() < self.cap {
            self.values.push(v);
        } else {
            self.values[self.head] = v;
            self.head = (self.head + 1) % self.cap;
        }
    }

    /// The newest value.
    pub fn last(&self) -> Option<f32> {
        if self.values.len() < self.cap {
            self.values.last().copied()
        } else {
            Some(self.values[(self.head + self.cap - 1) % self.cap])
        }
    }

    /// Values oldest first, left-padded with `NaN` to `cap`.
    pub fn padded(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.cap);
        out.resize(self.cap - self.values.len(), f32::NAN);
        let (newer, older) = self.values.split_at(self.head);
        out.extend_from_slice(older);
        out.extend_from_slice(newer);
        out
    }

    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.values.capacity() * std::mem::size_of::<f32>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pads_then_wraps() {
        let mut r = Ring::new(3);
        r.push(1.0);
        let p = r.padded();
        assert!(p[0].is_nan() && p[1].is_nan() && p[2] == 1.0);
        r.push(2.0);
        r.push(3.0);
        r.push(4.0);
        assert_eq!(r.padded(), vec![2.0, 3.0, 4.0]);
        assert_eq!(r.last(), Some(4.0));
        r.clear();
        assert!(r.len() == 0 && r.last().is_none());
    }
}
