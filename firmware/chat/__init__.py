"""Secure chat: XMPP (slixmpp) for accounts, contacts and messages; OTR version 3 (libotr) on top.

Each foreign library is touched by exactly one module here: ``xmpp`` (slixmpp), ``otr`` (libotr,
through cffi). Chat knows nothing of calls or of screens: it reports events and takes commands.
"""
