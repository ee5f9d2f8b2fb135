use std::io::Write;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tracing_subscriber::fmt::MakeWriter;

use super::Output;

/// A sink that records what reaches it and how many writes it took, and can be held shut to
/// play a stalled log reader.
#[derive(Clone, Default)]
struct Sink {
    seen: Arc<Mutex<(Vec<u8>, usize)>>,
    gate: Arc<(Mutex<bool>, Condvar)>,
}

impl Sink {
    fn hold(&self) {
        *self.gate.0.lock().unwrap() = true;
    }

    fn release(&self) {
        *self.gate.0.lock().unwrap() = false;
        self.gate.1.notify_all();
    }

    fn text(&self) -> String {
        String::from_utf8(self.seen.lock().unwrap().0.clone()).unwrap()
    }

    fn writes(&self) -> usize {
        self.seen.lock().unwrap().1
    }
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let held = self.gate.0.lock().unwrap();
        drop(self.gate.1.wait_while(held, |held| *held).unwrap());
        let mut seen = self.seen.lock().unwrap();
        seen.0.extend_from_slice(buf);
        seen.1 += 1;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn line(output: &Output, text: &str) {
    output.make_writer().write_all(text.as_bytes()).unwrap();
}

#[test]
fn lines_from_many_threads_arrive_whole_and_flush_waits_for_them() {
    let sink = Sink::default();
    let output = Output::spawn(sink.clone(), super::LIMIT).unwrap();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let output = output.clone();
            std::thread::spawn(move || {
                for i in 0..500 {
                    line(&output, &format!("thread {t} line {i}\n"));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    output.flush();
    let text = sink.text();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2000, "every line, once");
    for t in 0..4 {
        let own: Vec<&str> = lines
            .iter()
            .copied()
            .filter(|l| l.starts_with(&format!("thread {t} ")))
            .collect();
        let expected: Vec<String> = (0..500).map(|i| format!("thread {t} line {i}")).collect();
        assert_eq!(own, expected, "a thread's lines stay whole and in order");
    }
}

#[test]
fn a_burst_of_lines_is_written_in_few_writes() {
    let sink = Sink::default();
    let output = Output::spawn(sink.clone(), super::LIMIT).unwrap();
    for i in 0..1000 {
        line(&output, &format!("line {i}\n"));
    }
    output.flush();
    assert_eq!(sink.text().lines().count(), 1000);
    // One write per line is what writing from the workers cost; each batch gathers for 1 ms.
    assert!(
        sink.writes() <= 100,
        "1,000 lines took {} writes",
        sink.writes()
    );
}

#[test]
fn a_stalled_reader_drops_lines_beyond_the_limit_without_blocking_the_writer() {
    let sink = Sink::default();
    let output = Output::spawn(sink.clone(), 1000).unwrap();
    // The output thread takes the first line and blocks in the sink with it.
    sink.hold();
    line(&output, "first\n");
    let deadline = Instant::now() + Duration::from_secs(5);
    while output.shared.lock().appended == 0 || !output.shared.lock().pending.is_empty() {
        assert!(
            Instant::now() < deadline,
            "the output thread never took the first line"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    // 100 lines of 100 bytes while the reader is stalled: 10 fit the limit, the rest are
    // dropped, and appending never waits for the sink.
    let start = Instant::now();
    let body = "x".repeat(99);
    for _ in 0..100 {
        line(&output, &format!("{body}\n"));
    }
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "appending waited for the stalled sink"
    );
    assert_eq!(output.shared.lock().dropped, 90);

    sink.release();
    output.flush();
    line(&output, "after\n");
    output.flush();
    let text = sink.text();
    assert_eq!(text.lines().next(), Some("first"));
    assert_eq!(text.lines().filter(|l| *l == body).count(), 10);
    assert_eq!(
        text.lines().last(),
        Some("after"),
        "output resumes once it caught up"
    );
}
