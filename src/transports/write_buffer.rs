//! The bytes a stream transport accepted but the kernel did not take yet.
//!
//! One contiguous buffer with a read offset: a send takes a single slice,
//! consuming is an offset bump, and the consumed front is reclaimed when it
//! grows past the live part, so the buffer never copies more than it sends.

#[derive(Default)]
pub struct WriteBuffer {
    bytes: Vec<u8>,
    start: usize,
}

impl WriteBuffer {
    pub fn len(&self) -> usize {
        self.bytes.len() - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn pending(&self) -> &[u8] {
        &self.bytes[self.start..]
    }

    pub fn extend(&mut self, data: &[u8]) {
        if self.start > 0 && self.start >= self.len() {
            self.compact();
        }
        self.bytes.extend_from_slice(data);
    }

    /// Drops the first `count` pending bytes (those the kernel took).
    pub fn consume(&mut self, count: usize) {
        self.start = (self.start + count).min(self.bytes.len());
        if self.start == self.bytes.len() {
            self.clear();
        }
    }

    pub fn clear(&mut self) {
        self.bytes.clear();
        self.start = 0;
        // A burst must not pin a large allocation for the connection's life.
        if self.bytes.capacity() > 1 << 20 {
            self.bytes.shrink_to(64 * 1024);
        }
    }

    fn compact(&mut self) {
        self.bytes.drain(..self.start);
        self.start = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::WriteBuffer;

    #[test]
    fn keeps_bytes_in_order_across_partial_consumes() {
        let mut buffer = WriteBuffer::default();
        buffer.extend(b"hello ");
        buffer.extend(b"world");
        buffer.consume(3);
        assert_eq!(buffer.pending(), b"lo world");
        buffer.extend(b"!");
        assert_eq!(buffer.pending(), b"lo world!");
        assert_eq!(buffer.len(), 9);
    }

    #[test]
    fn compacts_once_the_consumed_front_dominates() {
        let mut buffer = WriteBuffer::default();
        buffer.extend(&[1u8; 100]);
        buffer.consume(90);
        buffer.extend(&[2u8; 5]);
        assert_eq!(buffer.start, 0, "the consumed front should have been reclaimed");
        assert_eq!(buffer.len(), 15);
        assert_eq!(&buffer.pending()[..10], &[1u8; 10]);
        assert_eq!(&buffer.pending()[10..], &[2u8; 5]);
    }

    #[test]
    fn consuming_everything_empties_it() {
        let mut buffer = WriteBuffer::default();
        buffer.extend(b"abc");
        buffer.consume(3);
        assert!(buffer.is_empty());
        buffer.consume(10);
        assert!(buffer.is_empty());
        assert_eq!(buffer.pending(), b"");
    }
}
