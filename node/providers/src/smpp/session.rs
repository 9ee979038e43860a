//! The SMPP session task: owns the socket, the bind, sequence numbers, pending submits,
//! keep-alives and reconnects. Talks to [`super::SmppProvider`] only through the request
//! channel, the link-state watch and the stop watch; to the node only through the events
//! channel.

use std::collections::{HashMap, VecDeque};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use rand::Rng;
use rusmpp::pdus::{BindTransceiver, DeliverSm, DeliverSmResp};
use rusmpp::tlvs::TlvValue;
use rusmpp::tokio_codec::CommandCodec;
use rusmpp::types::COctetString;
use rusmpp::values::{InterfaceVersion, Npi, Ton};
use rusmpp::{Command, CommandId, CommandStatus, Pdu};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::codec::Framed;
use tracing::{debug, info, warn};

use super::receipt::{message_state_stat, parse_receipt_text, receipt_kind};
use super::{CLAIM_PENDING, CLAIM_WRITTEN, LinkState, SmppConfig, SubmitReply, SubmitRequest};
use crate::sms_encoding::{decode_gsm7_unpacked, decode_ucs2_be};
use crate::{Inbound, ProviderEvent, ProviderEvents, Receipt};

type Link = Framed<TcpStream, CommandCodec>;

/// ESME_RX_T_APPN: "temporary application error", asks the SMSC to deliver again later.
const STATUS_RX_T_APPN: u32 = 0x64;
/// A session that lasted this long counts as healthy and resets the reconnect backoff.
const STABLE_SESSION: Duration = Duration::from_secs(10);
/// How many later-segment SMSC ids are remembered for receipt mapping.
const SEGMENT_MAP_CAPACITY: usize = 65_536;

pub(crate) struct Session {
    pub(crate) name: String,
    pub(crate) config: Arc<SmppConfig>,
    pub(crate) events: ProviderEvents,
    pub(crate) requests: mpsc::Receiver<SubmitRequest>,
    pub(crate) link: watch::Sender<LinkState>,
    pub(crate) stop: watch::Receiver<bool>,
}

/// Why a bound session ended.
enum End {
    Lost(String),
    Stop,
}

#[derive(Debug, thiserror::Error)]
enum BindError {
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("write: {0}")]
    Write(String),
    #[error("connection closed during bind")]
    Closed,
    #[error("decode: {0}")]
    Decode(String),
    #[error("bind refused, status 0x{0:08X}")]
    Refused(u32),
    #[error("no bind_transceiver_resp within {0} ms")]
    Timeout(u64),
}

/// Later-segment SMSC id → first-segment id, bounded FIFO.
#[derive(Default)]
struct SegmentMap {
    map: HashMap<String, String>,
    order: VecDeque<String>,
}

impl SegmentMap {
    fn insert(&mut self, id: String, primary: String) {
        if self.map.insert(id.clone(), primary).is_none() {
            self.order.push_back(id);
        }
        while self.order.len() > SEGMENT_MAP_CAPACITY {
            if let Some(old) = self.order.pop_front() {
                self.map.remove(&old);
            }
        }
    }

    fn primary_of(&self, id: &str) -> Option<&str> {
        self.map.get(id).map(String::as_str)
    }
}

struct Pending {
    reply: oneshot::Sender<SubmitReply>,
    expires: Instant,
    primary_id: Option<String>,
    _permit: OwnedSemaphorePermit,
}

fn jittered(base: Duration) -> Duration {
    // "Equal jitter": half fixed, half random, so many nodes that lost the same SMSC do not
    // reconnect in lock-step.
    let half = base / 2;
    let extra_ms = rand::rng().random_range(0..=half.as_millis().max(1) as u64);
    half + Duration::from_millis(extra_ms)
}

pub(crate) async fn run(mut s: Session) {
    let min = Duration::from_millis(s.config.reconnect_backoff_min_ms);
    let max = Duration::from_millis(s.config.reconnect_backoff_max_ms);
    let mut backoff = min;
    let mut segments = SegmentMap::default();
    loop {
        if *s.stop.borrow() {
            break;
        }
        s.link.send_replace(LinkState::Connecting);
        let bound = tokio::select! {
            r = tokio::time::timeout(s.config.bind_timeout(), connect_and_bind(&s.config)) => {
                match r {
                    Ok(r) => r,
                    Err(_) => Err(BindError::Timeout(s.config.bind_timeout_ms)),
                }
            }
            _ = s.stop.changed() => break,
        };
        let pause = match bound {
            Ok(link) => {
                info!(account = %s.name, "smpp bound");
                let bound_at = Instant::now();
                s.link.send_replace(LinkState::Bound);
                match session(&mut s, link, &mut segments).await {
                    End::Stop => break,
                    End::Lost(reason) => {
                        // Only a session that stayed up a while resets the backoff: an SMSC
                        // that accepts binds and drops them at once must not be hammered.
                        if bound_at.elapsed() >= STABLE_SESSION {
                            backoff = min;
                        }
                        let delay = jittered(backoff);
                        backoff = (backoff * 2).min(max);
                        warn!(account = %s.name, %reason, delay_ms = delay.as_millis() as u64, "smpp session lost; reconnecting");
                        // A short pause stays "Connecting" so sends wait for the rebind rather
                        // than fail at once; a long one fails them fast with a retry hint.
                        if delay <= s.config.bind_timeout() {
                            s.link.send_replace(LinkState::Connecting);
                        } else {
                            s.link.send_replace(LinkState::Down {
                                reason: format!("session lost: {reason}"),
                                retry_at: Instant::now() + delay,
                            });
                        }
                        delay
                    }
                }
            }
            Err(e) => {
                let delay = jittered(backoff);
                backoff = (backoff * 2).min(max);
                warn!(account = %s.name, error = %e, delay_ms = delay.as_millis() as u64, "smpp bind failed");
                s.link.send_replace(LinkState::Down {
                    reason: e.to_string(),
                    retry_at: Instant::now() + delay,
                });
                delay
            }
        };
        if !idle(&mut s, pause).await {
            break;
        }
    }
    s.link.send_replace(LinkState::Stopped);
    // Anything still queued was never written.
    s.requests.close();
    while let Ok(req) = s.requests.try_recv() {
        let _ = req
            .reply
            .send(SubmitReply::NotBound("smpp provider shut down".into()));
    }
}

/// Sleeps `pause` while answering requests "not bound". False when asked to stop.
async fn idle(s: &mut Session, pause: Duration) -> bool {
    let until = Instant::now() + pause;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(until) => return true,
            _ = s.stop.changed() => return false,
            req = s.requests.recv() => match req {
                Some(req) => {
                    let _ = req.reply.send(SubmitReply::NotBound("smpp not bound (reconnecting)".into()));
                }
                None => return false,
            },
        }
    }
}

fn status_u32(status: CommandStatus) -> u32 {
    u32::from(status)
}

async fn connect_and_bind(config: &SmppConfig) -> Result<Link, BindError> {
    let stream = TcpStream::connect((config.host.as_str(), config.port))
        .await
        .map_err(BindError::Connect)?;
    // Small PDUs, latency matters more than packet count.
    let _ = stream.set_nodelay(true);
    let mut link = Framed::new(stream, CommandCodec::new());
    let bind = BindTransceiver::builder()
        .system_id(c_str(&config.system_id)?)
        .password(c_str(&config.password)?)
        .system_type(c_str(&config.system_type)?)
        .interface_version(InterfaceVersion::Smpp3_4)
        .addr_ton(Ton::Unknown)
        .addr_npi(Npi::Unknown)
        .address_range(COctetString::empty())
        .build();
    link.send(Command::new(CommandStatus::EsmeRok, 1, bind))
        .await
        .map_err(|e| BindError::Write(e.to_string()))?;
    loop {
        let cmd = match link.next().await {
            None => return Err(BindError::Closed),
            Some(Err(e)) => return Err(BindError::Decode(e.to_string())),
            Some(Ok(cmd)) => cmd,
        };
        match cmd.id() {
            CommandId::BindTransceiverResp | CommandId::GenericNack
                if cmd.sequence_number() == 1 =>
            {
                let status = status_u32(cmd.status());
                return if status == 0 && cmd.id() == CommandId::BindTransceiverResp {
                    Ok(link)
                } else {
                    Err(BindError::Refused(status))
                };
            }
            CommandId::EnquireLink => {
                let resp = Command::new(
                    CommandStatus::EsmeRok,
                    cmd.sequence_number(),
                    Pdu::EnquireLinkResp,
                );
                link.send(resp)
                    .await
                    .map_err(|e| BindError::Write(e.to_string()))?;
            }
            other => debug!(command = ?other, "smpp pdu ignored while binding"),
        }
    }
}

fn c_str<const MIN: usize, const MAX: usize>(
    value: &str,
) -> Result<COctetString<MIN, MAX>, BindError> {
    COctetString::from_str(value).map_err(|e| BindError::Write(e.to_string()))
}

#[derive(Debug, thiserror::Error)]
enum WriteError {
    /// The write failed: at most a partial PDU left us, which the SMSC cannot act on.
    #[error("smpp write failed: {0}")]
    Failed(rusmpp::tokio_codec::EncodeError),
    /// The SMSC stopped reading (TCP window closed): the PDU may sit in the kernel's buffer.
    #[error("smpp write stalled for {0} ms")]
    Stalled(u64),
}

/// Writes one PDU, bounded: a peer that stops reading must not stall the session forever
/// (nothing else, not even enquire_link, would run meanwhile).
async fn write(link: &mut Link, cmd: Command, limit: Duration) -> Result<(), WriteError> {
    match tokio::time::timeout(limit, link.send(cmd)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(WriteError::Failed(e)),
        Err(_) => Err(WriteError::Stalled(limit.as_millis() as u64)),
    }
}

fn next_seq(seq: &mut u32) -> u32 {
    // Sequence numbers run 1..=0x7FFFFFFF; 1 was the bind.
    *seq = if *seq >= 0x7FFF_FFFF { 2 } else { *seq + 1 };
    *seq
}

/// Runs one bound session until it ends. Every pending submit is answered before returning.
async fn session(s: &mut Session, mut link: Link, segments: &mut SegmentMap) -> End {
    let response_timeout = s.config.response_timeout();
    let enquire_interval = Duration::from_millis(s.config.enquire_link_interval_ms);
    let housekeeping = (response_timeout / 4)
        .min(enquire_interval / 2)
        .clamp(Duration::from_millis(20), Duration::from_secs(1));
    let mut tick = tokio::time::interval(housekeeping);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq: u32 = 1;
    let mut pending: HashMap<u32, Pending> = HashMap::new();
    let mut enquire_due = Instant::now() + enquire_interval;
    let mut enquire_outstanding: Option<Instant> = None;

    let end = loop {
        tokio::select! {
            _ = s.stop.changed() => {
                unbind(&mut link, &mut seq, response_timeout).await;
                break End::Stop;
            }
            req = s.requests.recv() => {
                let Some(req) = req else {
                    unbind(&mut link, &mut seq, response_timeout).await;
                    break End::Stop;
                };
                // `send` may have given up already; then this must not go out.
                if req.claim.compare_exchange(CLAIM_PENDING, CLAIM_WRITTEN, Ordering::AcqRel, Ordering::Acquire).is_err() {
                    continue;
                }
                let n = next_seq(&mut seq);
                let cmd = Command::new(CommandStatus::EsmeRok, n, Pdu::SubmitSm(req.submit));
                if let Err(e) = write(&mut link, cmd, response_timeout).await {
                    let reason = e.to_string();
                    let reply = match e {
                        WriteError::Failed(_) => SubmitReply::NotWritten(reason.clone()),
                        WriteError::Stalled(_) => SubmitReply::Lost(reason.clone()),
                    };
                    let _ = req.reply.send(reply);
                    break End::Lost(reason);
                }
                pending.insert(n, Pending {
                    reply: req.reply,
                    expires: Instant::now() + response_timeout,
                    primary_id: req.primary_id,
                    _permit: req.permit,
                });
            }
            frame = link.next() => {
                let cmd = match frame {
                    None => break End::Lost("connection closed by SMSC".into()),
                    Some(Err(e)) => break End::Lost(format!("smpp decode: {e}")),
                    Some(Ok(cmd)) => cmd,
                };
                if let Err(end) = incoming(s, &mut link, cmd, &mut pending, segments, &mut enquire_outstanding).await {
                    break end;
                }
            }
            _ = tick.tick() => {
                let now = Instant::now();
                // Expired submits: `send` has already answered Ambiguous; free their window slot.
                pending.retain(|_, p| p.expires > now);
                if let Some(sent) = enquire_outstanding {
                    if now.duration_since(sent) > response_timeout {
                        break End::Lost("enquire_link unanswered".into());
                    }
                } else if now >= enquire_due {
                    let n = next_seq(&mut seq);
                    let ping = Command::new(CommandStatus::EsmeRok, n, Pdu::EnquireLink);
                    if let Err(e) = write(&mut link, ping, response_timeout).await {
                        break End::Lost(e.to_string());
                    }
                    enquire_outstanding = Some(now);
                    enquire_due = now + enquire_interval;
                }
            }
        }
    };
    let reason = match &end {
        End::Lost(reason) => format!("smpp connection lost after submit_sm was written: {reason}"),
        End::Stop => "smpp provider shut down after submit_sm was written".to_string(),
    };
    for (_, p) in pending.drain() {
        let _ = p.reply.send(SubmitReply::Lost(reason.clone()));
    }
    end
}

async fn unbind(link: &mut Link, seq: &mut u32, limit: Duration) {
    let n = next_seq(seq);
    let done = async {
        link.send(Command::new(CommandStatus::EsmeRok, n, Pdu::Unbind))
            .await
            .ok()?;
        while let Some(Ok(cmd)) = link.next().await {
            if cmd.id() == CommandId::UnbindResp {
                break;
            }
        }
        Some(())
    };
    let _ = tokio::time::timeout(limit, done).await;
}

/// Handles one PDU from the SMSC. `Err` ends the session.
async fn incoming(
    s: &mut Session,
    link: &mut Link,
    cmd: Command,
    pending: &mut HashMap<u32, Pending>,
    segments: &mut SegmentMap,
    enquire_outstanding: &mut Option<Instant>,
) -> Result<(), End> {
    let seq = cmd.sequence_number();
    let status = status_u32(cmd.status());
    let limit = s.config.response_timeout();
    let lost = |e: WriteError| End::Lost(e.to_string());
    match cmd.id() {
        CommandId::SubmitSmResp | CommandId::GenericNack => {
            let Some(p) = pending.remove(&seq) else {
                debug!(account = %s.name, seq, "smpp response for unknown or expired sequence");
                return Ok(());
            };
            let message_id = match cmd.pdu() {
                Some(Pdu::SubmitSmResp(resp)) => resp.message_id().as_str().to_string(),
                _ => String::new(),
            };
            let status = if cmd.id() == CommandId::GenericNack && status == 0 {
                // A generic_nack always means "not accepted"; never read it as success.
                0x08
            } else {
                status
            };
            if status == 0
                && !message_id.is_empty()
                && let Some(primary) = p.primary_id
            {
                segments.insert(message_id.clone(), primary);
            }
            let _ = p.reply.send(SubmitReply::Response { status, message_id });
        }
        CommandId::EnquireLinkResp => *enquire_outstanding = None,
        CommandId::EnquireLink => {
            let pong = Command::new(CommandStatus::EsmeRok, seq, Pdu::EnquireLinkResp);
            write(link, pong, limit).await.map_err(lost)?;
        }
        CommandId::DeliverSm => {
            let status = match cmd.pdu() {
                Some(Pdu::DeliverSm(dsm)) => match deliver_event(&s.name, dsm, segments) {
                    Some(event) => {
                        // Await: a slow consumer slows this session (the channel is the bound),
                        // and the SMSC only gets its ack once the event is safely queued.
                        match s.events.send(event).await {
                            Ok(()) => 0,
                            Err(_) => {
                                warn!(account = %s.name, "smpp events receiver gone; asking SMSC to redeliver");
                                STATUS_RX_T_APPN
                            }
                        }
                    }
                    None => 0,
                },
                _ => 0,
            };
            let resp = Command::new(
                CommandStatus::from(status),
                seq,
                Pdu::DeliverSmResp(DeliverSmResp::default()),
            );
            write(link, resp, limit).await.map_err(lost)?;
        }
        CommandId::Unbind => {
            let bye = Command::new(CommandStatus::EsmeRok, seq, Pdu::UnbindResp);
            let _ = write(link, bye, limit).await;
            return Err(End::Lost("SMSC unbound".into()));
        }
        other if !other.is_response() => {
            // An operation we do not support (data_sm, query, ...): say so rather than leave
            // the SMSC waiting.
            debug!(account = %s.name, command = ?other, "smpp operation not supported");
            let nack = Command::new(CommandStatus::EsmeRinvcmdid, seq, Pdu::GenericNack);
            write(link, nack, limit).await.map_err(lost)?;
        }
        other => debug!(account = %s.name, command = ?other, seq, "smpp pdu ignored"),
    }
    Ok(())
}

/// The body of a deliver_sm: `short_message`, or the `message_payload` TLV when that is empty.
fn body_bytes(dsm: &DeliverSm) -> Vec<u8> {
    let sm: &[u8] = dsm.short_message().as_ref();
    if !sm.is_empty() {
        return sm.to_vec();
    }
    dsm.tlvs()
        .iter()
        .find_map(|t| match t.value() {
            Some(TlvValue::MessagePayload(p)) => Some(p.value.as_ref().to_vec()),
            _ => None,
        })
        .unwrap_or_default()
}

/// Turns a deliver_sm into the event to forward; `None` when there is nothing to forward
/// (a non-final receipt, a DELIVRD for a later segment, an unparseable receipt).
fn deliver_event(name: &str, dsm: &DeliverSm, segments: &SegmentMap) -> Option<ProviderEvent> {
    let esm = u8::from(dsm.esm_class);
    let body = body_bytes(dsm);
    if esm & 0x04 != 0 {
        receipt_event(name, dsm, &body, segments).map(ProviderEvent::Receipt)
    } else {
        let user_data = if esm & 0x40 != 0 {
            // UDHI: skip the header (its first octet is its length).
            let udhl = body.first().copied().unwrap_or(0) as usize;
            body.get(udhl + 1..).unwrap_or_default().to_vec()
        } else {
            body
        };
        let text = match u8::from(dsm.data_coding) {
            0x00 => decode_gsm7_unpacked(&user_data),
            0x08 => decode_ucs2_be(&user_data),
            0x03 => user_data.iter().map(|&b| char::from(b)).collect(),
            _ => String::from_utf8_lossy(&user_data).into_owned(),
        };
        Some(ProviderEvent::Inbound(Inbound {
            provider: name.to_string(),
            from: dsm.source_addr.as_str().to_string(),
            to: dsm.destination_addr.as_str().to_string(),
            text,
        }))
    }
}

fn receipt_event(
    name: &str,
    dsm: &DeliverSm,
    body: &[u8],
    segments: &SegmentMap,
) -> Option<Receipt> {
    let mut tlv_id = None;
    let mut tlv_state = None;
    for tlv in dsm.tlvs() {
        match tlv.value() {
            Some(TlvValue::ReceiptedMessageId(id)) => tlv_id = Some(id.as_str().to_string()),
            Some(TlvValue::MessageState(state)) => tlv_state = Some(u8::from(*state)),
            _ => {}
        }
    }
    let text = String::from_utf8_lossy(body);
    let parsed = parse_receipt_text(&text);
    if let Err(e) = &parsed
        && (tlv_id.is_none() || tlv_state.is_none())
    {
        warn!(account = %name, error = %e, "smpp receipt unreadable; acknowledged and dropped");
        return None;
    }
    let parsed = parsed.ok();
    let id = tlv_id
        .filter(|id| !id.is_empty())
        .or_else(|| parsed.as_ref().map(|p| p.id.clone()))?;
    let stat = parsed
        .as_ref()
        .map(|p| p.stat.clone())
        .or_else(|| tlv_state.and_then(message_state_stat).map(str::to_string))?;
    let err = parsed.as_ref().and_then(|p| p.err.clone());
    let Some(kind) = receipt_kind(&stat) else {
        debug!(account = %name, smsc_id = %id, %stat, "smpp non-final receipt ignored");
        return None;
    };
    let id = match segments.primary_of(&id) {
        None => id,
        Some(primary) if kind.is_failure() => primary.to_string(),
        Some(_) => {
            debug!(account = %name, smsc_id = %id, "smpp later-segment delivery receipt absorbed");
            return None;
        }
    };
    let detail = match &err {
        Some(err) => format!("stat={stat} err={err}"),
        None => format!("stat={stat}"),
    };
    Some(Receipt {
        provider: name.to_string(),
        provider_message_id: id,
        kind,
        detail,
        error_code: err,
    })
}
