//! Fixed-window arithmetic, aligned to the Unix epoch so replicas agree on windows.

/// The fixed window that contains `now`, for a window of `length` seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// First second of the window, since the epoch.
    pub start: u64,
    /// Seconds from `now` until the next window starts: between 1 and `length`, never 0.
    pub until_reset: u64,
}

impl Window {
    /// The window of `length` seconds (at least 1) that contains `now_secs`.
    pub fn containing(now_secs: u64, length: u64) -> Window {
        let length = length.max(1);
        let into = now_secs % length;
        Window {
            start: now_secs - into,
            until_reset: length - into,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_starts_at_a_multiple_of_its_length() {
        let w = Window::containing(1_000_005, 60);
        assert_eq!(w.start, 999_960);
        assert_eq!(w.until_reset, 15);
    }

    #[test]
    fn at_a_boundary_the_full_window_remains() {
        let w = Window::containing(120, 60);
        assert_eq!(w.start, 120);
        assert_eq!(w.until_reset, 60);
    }

    #[test]
    fn the_last_second_of_a_window_has_one_second_left() {
        let w = Window::containing(179, 60);
        assert_eq!(w.start, 120);
        assert_eq!(w.until_reset, 1);
    }

    #[test]
    fn per_second_windows_always_reset_in_one_second() {
        for now in [0, 1, 17, 1_700_000_000] {
            assert_eq!(Window::containing(now, 1), Window { start: now, until_reset: 1 });
        }
    }
}
