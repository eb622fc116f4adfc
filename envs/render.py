"""Drawing the card envs' 300x300x3 uint8 frames, fast.

Everything that does not change within an episode is drawn once and cached: each card face per
(rank, suit, size), each formula token's glyph, and the table with a hand's cards on it. A step
then costs one copy of the cached table plus a few small array blits, far under a millisecond
(bench/envs.py). The font is the TrueType font bundled inside Pillow (``ImageFont.load_default``),
so no system font is needed; the cards, suits and the face-down back are drawn here, no assets.

All functions are pure: the same state gives the same pixels, so a frame can be re-rendered from
the compact state a rollout keeps (hand + formula tokens) instead of storing images.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache, lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

SIZE = 300
FELT = (53, 101, 77)
WHITE = (255, 255, 255)
RED = (200, 30, 30)
BLACK = (20, 20, 20)
SUITS = ("H", "D", "S", "C")
SUIT_NAMES = {"H": "hearts", "D": "diamonds", "S": "spades", "C": "clubs"}
_SUPERSAMPLE = 4  # card faces are drawn 4x larger and downsampled, for smooth edges


def rank_label(rank: int) -> str:
    """A, 2..10, J, Q, K for ranks 1..13."""
    return {1: "A", 11: "J", 12: "Q", 13: "K"}.get(rank, str(rank))


@cache
def font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


# ----------------------------------------------------------------------------- card faces


@cache
def card_face(rank: int, suit: str, width: int, height: int) -> np.ndarray:
    """One card, (height, width, 3) uint8, with felt showing at the rounded corners."""
    s = _SUPERSAMPLE
    w, h = width * s, height * s
    img = Image.new("RGB", (w, h), FELT)
    draw = ImageDraw.Draw(img)
    draw.rounded_rectangle((0, 0, w - 1, h - 1), radius=7 * s, fill=WHITE, outline=(90, 90, 90), width=s)
    color = RED if suit in ("H", "D") else BLACK
    label = rank_label(rank)
    big = font(int(h * 0.36))
    draw.text((w / 2, h * 0.40), label, fill=color, font=big, anchor="mm", stroke_width=s, stroke_fill=color)
    _draw_suit(draw, suit, w / 2, h * 0.76, h * 0.11, color)
    small = font(int(h * 0.16))
    draw.text((5 * s, 3 * s), label, fill=color, font=small, anchor="la", stroke_width=s // 2, stroke_fill=color)
    _draw_suit(draw, suit, w - 10 * s, 10 * s, h * 0.045, color)
    return np.asarray(img.resize((width, height), Image.LANCZOS), dtype=np.uint8)


@cache
def card_back(width: int, height: int) -> np.ndarray:
    """A face-down card (the dealer's hole card in Blackjack)."""
    s = _SUPERSAMPLE
    w, h = width * s, height * s
    img = Image.new("RGB", (w, h), FELT)
    draw = ImageDraw.Draw(img)
    draw.rounded_rectangle((0, 0, w - 1, h - 1), radius=7 * s, fill=WHITE, outline=(90, 90, 90), width=s)
    draw.rounded_rectangle((5 * s, 5 * s, w - 5 * s, h - 5 * s), radius=5 * s, fill=(40, 60, 150))
    step = 8 * s
    for offset in range(-h, w, step):
        draw.line((offset, 5 * s, offset + h, h - 5 * s), fill=(90, 110, 200), width=s)
    return np.asarray(img.resize((width, height), Image.LANCZOS), dtype=np.uint8)


def _draw_suit(draw: ImageDraw.ImageDraw, suit: str, cx: float, cy: float, r: float, color) -> None:
    """A suit symbol of half-height r centred at (cx, cy), from circles and polygons."""

    def circle(x: float, y: float, radius: float) -> None:
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=color)

    if suit == "D":
        draw.polygon([(cx, cy - r), (cx + 0.75 * r, cy), (cx, cy + r), (cx - 0.75 * r, cy)], fill=color)
    elif suit == "H":
        circle(cx - 0.5 * r, cy - 0.35 * r, 0.55 * r)
        circle(cx + 0.5 * r, cy - 0.35 * r, 0.55 * r)
        draw.polygon([(cx - 1.03 * r, cy - 0.2 * r), (cx + 1.03 * r, cy - 0.2 * r), (cx, cy + r)], fill=color)
    elif suit == "S":
        circle(cx - 0.5 * r, cy + 0.2 * r, 0.55 * r)
        circle(cx + 0.5 * r, cy + 0.2 * r, 0.55 * r)
        draw.polygon([(cx - 1.03 * r, cy + 0.05 * r), (cx + 1.03 * r, cy + 0.05 * r), (cx, cy - r)], fill=color)
        draw.polygon([(cx, cy + 0.2 * r), (cx - 0.4 * r, cy + 1.05 * r), (cx + 0.4 * r, cy + 1.05 * r)], fill=color)
    elif suit == "C":
        circle(cx, cy - 0.45 * r, 0.42 * r)
        circle(cx - 0.5 * r, cy + 0.2 * r, 0.42 * r)
        circle(cx + 0.5 * r, cy + 0.2 * r, 0.42 * r)
        draw.polygon([(cx, cy), (cx - 0.4 * r, cy + 1.05 * r), (cx + 0.4 * r, cy + 1.05 * r)], fill=color)
    else:
        raise ValueError(f"unknown suit {suit!r}; expected one of {SUITS}")


# ----------------------------------------------------------------------------- text glyphs


@cache
def text_patch(text: str, size: int, fg: tuple = WHITE, bg: tuple = FELT) -> np.ndarray:
    """A rendered string, (size * 1.3, width, 3) uint8, cached (formula tokens, labels)."""
    f = font(size)
    left, _, right, _ = f.getbbox(text, anchor="ls")
    height = int(size * 1.3)
    img = Image.new("RGB", (max(1, right - left + 2), height), bg)
    ImageDraw.Draw(img).text(
        (1 - left, int(size * 1.0)), text, fill=fg, font=f, anchor="ls", stroke_width=1, stroke_fill=fg
    )
    return np.asarray(img, dtype=np.uint8)


def blit(frame: np.ndarray, patch: np.ndarray, x: int, y: int) -> None:
    """Copy patch into frame at (x, y), clipped to the frame."""
    h = min(patch.shape[0], frame.shape[0] - y)
    w = min(patch.shape[1], frame.shape[1] - x)
    if h > 0 and w > 0:
        frame[y : y + h, x : x + w] = patch[:h, :w]


# ----------------------------------------------------------------------------- card-formula games

_FORMULA_LABEL_Y = 160
_FORMULA_LINE_Y = (198, 242)
_TOKEN_SIZE = 26
_TOKEN_GAP = 6


@lru_cache(maxsize=256)
def formula_table(cards: tuple[tuple[int, str], ...]) -> np.ndarray:
    """The table with the hand dealt and the "Formula:" label; read-only, shared by all steps."""
    frame = np.empty((SIZE, SIZE, 3), dtype=np.uint8)
    frame[:] = FELT
    n = len(cards)
    width, height, gap = (64, 92, 10) if n > 2 else (92, 130, 24)
    x0 = (SIZE - (n * width + (n - 1) * gap)) // 2
    y0 = 30 if n > 2 else 22
    for i, (rank, suit) in enumerate(cards):
        blit(frame, card_face(rank, suit, width, height), x0 + i * (width + gap), y0)
    blit(frame, text_patch("Formula:", 22), 10, _FORMULA_LABEL_Y)
    frame.flags.writeable = False
    return frame


def formula_frame(cards: Sequence[tuple[int, str]], formula: Sequence[str]) -> np.ndarray:
    """A card-formula game's observation: the hand and the formula so far, tokens spaced out."""
    frame = formula_table(tuple(cards)).copy()
    x, line = 12, 0
    for token in formula:
        patch = text_patch(token, _TOKEN_SIZE)
        if x + patch.shape[1] > SIZE - 10:
            x, line = 12, line + 1
            if line >= len(_FORMULA_LINE_Y):
                break  # never reached: formulas are truncated at 20 characters
        blit(frame, patch, x, _FORMULA_LINE_Y[line])
        x += patch.shape[1] + _TOKEN_GAP
    return frame


# ----------------------------------------------------------------------------- NumberLine


@cache
def numberline_frame_cached(position: int, target: int, max_position: int) -> np.ndarray:
    img = Image.new("RGB", (SIZE, SIZE), WHITE)
    draw = ImageDraw.Draw(img)
    f = font(36)
    draw.text((30, 40), f"Target: {target}", fill=BLACK, font=f, stroke_width=1, stroke_fill=BLACK)
    draw.text((30, 120), f"Current: {position}", fill=BLACK, font=f, stroke_width=1, stroke_fill=BLACK)
    # A number line below the text: ticks 0..max, the target as a ring, the agent as a dot.
    left, right, y = 30, 270, 235
    draw.line((left, y, right, y), fill=BLACK, width=3)
    step = (right - left) / max_position
    small = font(18)
    for i in range(max_position + 1):
        x = left + i * step
        draw.line((x, y - 8, x, y + 8), fill=BLACK, width=2)
        draw.text((x, y + 14), str(i), fill=BLACK, font=small, anchor="mt")
    tx, px = left + target * step, left + position * step
    draw.ellipse((tx - 13, y - 13, tx + 13, y + 13), outline=RED, width=4)
    draw.ellipse((px - 7, y - 7, px + 7, y + 7), fill=(30, 60, 200))
    frame = np.asarray(img, dtype=np.uint8)
    frame.flags.writeable = False
    return frame


def numberline_frame(position: int, target: int, max_position: int) -> np.ndarray:
    return numberline_frame_cached(position, target, max_position).copy()


# ----------------------------------------------------------------------------- Blackjack

_BJ_CARD = (60, 84)


@lru_cache(maxsize=1)
def blackjack_table() -> np.ndarray:
    frame = np.empty((SIZE, SIZE, 3), dtype=np.uint8)
    frame[:] = FELT
    blit(frame, text_patch("Dealer", 20), 10, 8)
    blit(frame, text_patch("Player", 20), 10, 158)
    frame.flags.writeable = False
    return frame


def blackjack_frame(
    dealer: Sequence[tuple[int, str]], player: Sequence[tuple[int, str]], reveal_dealer: bool
) -> np.ndarray:
    """Dealer's row (hole card face down until the player stands) above the player's row."""
    frame = blackjack_table().copy()
    _card_row(frame, dealer, 40, hide_from=1 if not reveal_dealer else len(dealer))
    _card_row(frame, player, 190, hide_from=len(player))
    return frame


def _card_row(frame: np.ndarray, cards: Sequence[tuple[int, str]], y: int, hide_from: int) -> None:
    width, height = _BJ_CARD
    n = len(cards)
    # Cards overlap when many are held (at most 11 before a bust) so the row stays on the table.
    step = min(width + 8, (SIZE - 20 - width) // max(n - 1, 1))
    for i, (rank, suit) in enumerate(cards):
        patch = card_back(width, height) if i >= hide_from else card_face(rank, suit, width, height)
        blit(frame, patch, 10 + i * step, y)


# ----------------------------------------------------------------------------- compact states


def from_state(state: tuple) -> np.ndarray:
    """Redraw a frame from an env's ``render_state()``: rollouts store the state, not the pixels."""
    kind, *args = state
    if kind == "formula":
        return formula_frame(*args)
    if kind == "numberline":
        return numberline_frame(*args)
    if kind == "blackjack":
        dealer, player, reveal = args
        return blackjack_frame(dealer, player, reveal_dealer=reveal)
    raise ValueError(f"unknown render state kind {kind!r}")
