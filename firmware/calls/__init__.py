"""Secure calls: SIP signalling (pjsua2), our own RTP media engine, ZRTP keys (bzrtp), SRTP (libsrtp2).

Each foreign library is touched by exactly one module here: ``sip`` (pjsua2), ``zrtp`` (bzrtp,
and libsqlite3 for its in-memory ZID cache), ``srtp`` (libsrtp2), ``codecs`` (spandsp). The rest
is plain Python: ``rtp`` (packets, jitter buffer, DTMF events). Calls know nothing of screens or
of chat: they report what happens as events and take commands.
"""
