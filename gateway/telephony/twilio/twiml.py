"""TwiML documents: connect the call to our stream, say sorry and hang up, transfer."""

from __future__ import annotations

from ..wire import XML_HEAD, lang_attr, xml_attr, xml_text


def connect_twiml(stream_url: str, parameters: dict[str, str], after: str = "", language: str = "",
                  stream_attrs: str = "") -> str:
    """`<Connect><Stream>` TwiML; `after` is spoken if we close the stream without hanging up;
    `stream_attrs`: more attributes of `<Stream>` (TeXML's bidirectional mode)."""
    params = "".join(f"<Parameter name={xml_attr(k)} value={xml_attr(v)}/>" for k, v in parameters.items() if v)
    tail = f"<Say{lang_attr(language)}>{xml_text(after)}</Say><Hangup/>" if after else ""
    return (f"{XML_HEAD}<Response><Connect><Stream url={xml_attr(stream_url)}{stream_attrs}>{params}</Stream>"
            f"</Connect>{tail}</Response>")


def say_and_hangup_twiml(text: str, language: str = "") -> str:
    return f"{XML_HEAD}<Response><Say{lang_attr(language)}>{xml_text(text)}</Say><Hangup/></Response>"


def dial_twiml(number: str, caller_id: str = "", timeout: int = 30, say: str = "", language: str = "") -> str:
    """Transfer TwiML for a call update: optionally say something, then `<Dial>` the number."""
    spoken = f"<Say{lang_attr(language)}>{xml_text(say)}</Say>" if say else ""
    cid = f" callerId={xml_attr(caller_id)}" if caller_id else ""
    return (f"{XML_HEAD}<Response>{spoken}<Dial{cid} timeout=\"{int(timeout)}\"><Number>{xml_text(number)}</Number>"
            "</Dial></Response>")
