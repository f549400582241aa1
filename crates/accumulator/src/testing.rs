//! Test helpers for this and other crates (feature `test-utils`): a real SMTP listener that
//! keeps what it was sent, for tests of alert email.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// The DATA of every message received, in order.
pub type Mails = Arc<Mutex<Vec<String>>>;

/// A minimal SMTP server on a real loopback socket: accepts every message and keeps its DATA.
/// Returns its `smtp://` URL and the messages.
pub async fn smtp_listener() -> std::io::Result<(String, Mails)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("smtp://127.0.0.1:{}", listener.local_addr()?.port());
    let mails: Mails = Arc::default();
    let sink = mails.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let sink = sink.clone();
            tokio::spawn(async move {
                let (read, mut write) = socket.into_split();
                let mut lines = BufReader::new(read).lines();
                let _ = write.write_all(b"220 test ESMTP\r\n").await;
                let (mut data, mut in_data) = (String::new(), false);
                while let Ok(Some(line)) = lines.next_line().await {
                    if in_data {
                        if line == "." {
                            in_data = false;
                            if let Ok(mut sink) = sink.lock() {
                                sink.push(std::mem::take(&mut data));
                            }
                            let _ = write.write_all(b"250 queued\r\n").await;
                        } else {
                            data.push_str(&line);
                            data.push('\n');
                        }
                        continue;
                    }
                    let verb = line.split_whitespace().next().unwrap_or("").to_ascii_uppercase();
                    let reply: &[u8] = match verb.as_str() {
                        "EHLO" | "HELO" => b"250 test\r\n",
                        "DATA" => {
                            in_data = true;
                            b"354 go on\r\n"
                        }
                        "QUIT" => {
                            let _ = write.write_all(b"221 bye\r\n").await;
                            break;
                        }
                        _ => b"250 ok\r\n",
                    };
                    let _ = write.write_all(reply).await;
                }
            });
        }
    });
    Ok((url, mails))
}
