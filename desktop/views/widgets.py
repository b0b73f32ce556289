"""Small reusable widgets: an aspect-fitting image view, a resettable slider, a banner, a vertical scroll area."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PySide6.QtCore import QEvent, QObject, QRectF, QSize, Qt, Signal
from PySide6.QtGui import QColor, QFont, QImage, QPainter, QPaintEvent
from PySide6.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QScrollArea,
    QSizePolicy,
    QSlider,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from desktop.imaging import rgb_to_qimage

TAB_PAGE_MARGINS = (8, 6, 4, 0)  # left, top, right, bottom of a panel that is a QTabWidget page


class ImageView(QWidget):
    """Paints one image fitted into the widget, with a placeholder text when empty."""

    def __init__(self, placeholder: str = "", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._image: QImage | None = None
        self._placeholder = placeholder
        self._caption = ""
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setMinimumSize(64, 64)
        self.setAttribute(Qt.WidgetAttribute.WA_OpaquePaintEvent, False)

    def set_array(self, arr: np.ndarray | None) -> None:
        self._image = None if arr is None else rgb_to_qimage(arr)
        self.update()

    def set_qimage(self, img: QImage | None) -> None:
        self._image = img
        self.update()

    def set_caption(self, text: str) -> None:
        self._caption = text
        self.update()

    @property
    def has_image(self) -> bool:
        return self._image is not None

    def image_rect(self) -> QRectF:
        if self._image is None:
            return QRectF()
        iw, ih = self._image.width(), self._image.height()
        s = min(self.width() / iw, self.height() / ih)
        w, h = iw * s, ih * s
        return QRectF((self.width() - w) / 2, (self.height() - h) / 2, w, h)

    def paintEvent(self, _event) -> None:
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
        p.fillRect(self.rect(), QColor("#111317"))
        if self._image is None:
            p.setPen(QColor("#6b7280"))
            p.drawText(self.rect().adjusted(12, 12, -12, -12), Qt.AlignmentFlag.AlignCenter | Qt.TextFlag.TextWordWrap,
                       self._placeholder)
        else:
            p.drawImage(self.image_rect(), self._image)
            self.paint_overlay(p)
        if self._caption:
            f = QFont(self.font())
            f.setPointSizeF(max(7.0, f.pointSizeF() - 1))
            p.setFont(f)
            fm = p.fontMetrics()
            # the advance, not the ink's bounding box: that one can be narrower than the drawn text ("256²")
            r = QRectF(8, 8, fm.horizontalAdvance(self._caption) + 12, fm.height() + 6).toRect()
            p.fillRect(r, QColor(0, 0, 0, 150))
            p.setPen(QColor("#e5e7eb"))
            p.drawText(r, Qt.AlignmentFlag.AlignCenter, self._caption)
        p.end()

    def paint_overlay(self, p: QPainter) -> None:
        """Subclasses draw over the image here (image coordinates via `image_rect`)."""

    def sizeHint(self) -> QSize:
        return QSize(256, 256)


class ResettableSlider(QSlider):
    """A horizontal slider that resets to its default on double-click."""

    reset_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(Qt.Orientation.Horizontal, parent)

    def mouseDoubleClickEvent(self, event) -> None:
        self.reset_requested.emit()
        event.accept()


class FloatSlider(QWidget):
    """A labelled float slider: integer ticks mapped to [minimum, maximum] by `step`.

    `value_changed(value, dragging)` while moving; `released(value)` when the drag ends.
    """

    value_changed = Signal(float, bool)
    released = Signal(float)

    def __init__(self, label: str, minimum: float, maximum: float, step: float, default: float = 0.0,
                 fmt: Callable[[float], str] | None = None, tooltip: str = "", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.minimum, self.maximum, self.step, self.default = minimum, maximum, step, default
        self._fmt = fmt or (lambda v: f"{v:+.1f}" if minimum < 0 else f"{v:.2f}")
        self.label = QLabel(label)
        self.label.setObjectName("sliderLabel")
        self.label.setMinimumWidth(96)
        self.slider = ResettableSlider()
        self.slider.setRange(0, round((maximum - minimum) / step))
        self.slider.setValue(self._to_int(default))
        self.value_label = QLabel(self._fmt(default))
        self.value_label.setObjectName("sliderValue")
        self.value_label.setMinimumWidth(44)
        self.value_label.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        tip = (tooltip + "\n" if tooltip else "") + "Double-click to reset."
        self.setToolTip(tip)
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(8)
        lay.addWidget(self.label)
        lay.addWidget(self.slider, 1)
        lay.addWidget(self.value_label)
        self.slider.valueChanged.connect(self._on_int)
        self.slider.sliderReleased.connect(lambda: self.released.emit(self.value()))
        self.slider.reset_requested.connect(self.reset)

    def _to_int(self, v: float) -> int:
        return round((min(self.maximum, max(self.minimum, v)) - self.minimum) / self.step)

    def value(self) -> float:
        return round(self.minimum + self.slider.value() * self.step, 6)

    def set_value(self, v: float, *, emit: bool = False) -> None:
        if not emit:
            self.slider.blockSignals(True)
        self.slider.setValue(self._to_int(v))
        self.slider.blockSignals(False)
        self.value_label.setText(self._fmt(self.value()))
        self._mark()

    def reset(self) -> None:
        self.set_value(self.default)
        self.value_changed.emit(self.value(), False)
        self.released.emit(self.value())

    def _mark(self) -> None:
        changed = abs(self.value() - self.default) > 1e-9
        if self.label.property("changed") != changed:
            self.label.setProperty("changed", changed)
            self.label.style().unpolish(self.label)
            self.label.style().polish(self.label)

    def _on_int(self, _i: int) -> None:
        v = self.value()
        self.value_label.setText(self._fmt(v))
        self._mark()
        self.value_changed.emit(v, self.slider.isSliderDown())


class Banner(QFrame):
    """A non-modal banner: message, hint, expandable details, dismiss. Red for errors, amber for warnings
    (`kind` property "error"/"warning", styled in resources/style.qss); an error is never replaced by a
    warning."""

    dismissed = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("banner")
        self.message = QLabel()
        self.message.setObjectName("bannerMessage")
        self.message.setWordWrap(True)
        self.message.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.hint = QLabel()
        self.hint.setObjectName("bannerHint")
        self.hint.setWordWrap(True)
        self.details = QPlainTextEdit()
        self.details.setReadOnly(True)
        self.details.setMaximumHeight(160)
        self.details.hide()
        self.details_button = QToolButton()
        self.details_button.setText("Details")
        self.details_button.setCheckable(True)
        self.details_button.toggled.connect(self.details.setVisible)
        close = QToolButton()
        close.setText("✕")
        close.setObjectName("bannerClose")
        close.setToolTip("Dismiss")
        close.clicked.connect(self.dismiss)
        top = QHBoxLayout()
        icon = QLabel("⚠")
        icon.setObjectName("bannerIcon")
        top.addWidget(icon, 0, Qt.AlignmentFlag.AlignTop)
        texts = QVBoxLayout()
        texts.setSpacing(2)
        texts.addWidget(self.message)
        texts.addWidget(self.hint)
        top.addLayout(texts, 1)
        top.addWidget(self.details_button, 0, Qt.AlignmentFlag.AlignTop)
        top.addWidget(close, 0, Qt.AlignmentFlag.AlignTop)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(12, 8, 8, 8)
        lay.addLayout(top)
        lay.addWidget(self.details)
        self.count = 0
        self.kind = ""  # "error" or "warning" while shown
        self.hide()

    def show_error(self, message: str, hint: str = "", details: str = "") -> None:
        self.count += 1
        more = f"  ({self.count} errors)" if self.count > 1 else ""
        self._show("error", message + more, hint, details)

    def show_warning(self, message: str, hint: str = "", details: str = "") -> bool:
        """Show a warning unless an error is shown (it stays until dismissed); True when shown."""
        if self.kind == "error" and self.isVisible():
            return False
        self._show("warning", message, hint, details)
        return True

    def clear_warning(self) -> None:
        """Hide the banner if it shows a warning (its cause is gone); an error stays."""
        if self.kind == "warning":
            self.dismiss()

    def _show(self, kind: str, message: str, hint: str, details: str) -> None:
        if kind != self.kind:
            self.kind = kind
            self.setProperty("kind", kind)
            for w in (self, *self.findChildren(QWidget)):  # the children's colours depend on the kind too
                w.style().unpolish(w)
                w.style().polish(w)
        self.message.setText(message)
        self.hint.setText(hint)
        self.hint.setVisible(bool(hint))
        self.details.setPlainText(details)
        self.details_button.setVisible(bool(details))
        self.show()

    def dismiss(self) -> None:
        self.count = 0
        self.kind = ""
        self.details_button.setChecked(False)
        self.hide()
        self.dismissed.emit()



class VerticalScroll(QScrollArea):
    """A frameless scroll area for one panel: scrolls vertically only, so word-wrapped texts follow the width.

    With `fit_height`, its minimum height is the panel's height at the current width (at most `fit_height`
    px): a splitter then never squeezes the panel's wrapped text out of sight; only a taller panel scrolls.
    When the panel grows taller than the view, `needs_height(extra_px)` asks the owner for more room.
    """

    needs_height = Signal(int)

    def __init__(self, widget: QWidget, fit_height: int = 0, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._fit = fit_height
        self.setWidgetResizable(True)
        self.setFrameShape(QScrollArea.Shape.NoFrame)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setWidget(widget)
        if fit_height:
            widget.installEventFilter(self)

    def content_height(self, width: int) -> int:
        w = self.widget()
        if w.hasHeightForWidth():
            return max(w.heightForWidth(width), w.minimumSizeHint().height())
        return w.minimumSizeHint().height()

    def minimumSizeHint(self) -> QSize:
        hint = super().minimumSizeHint()
        if not self._fit:
            return hint
        width = self.viewport().width() if self.isVisible() else self.widget().sizeHint().width()
        return QSize(hint.width(), max(hint.height(), min(self._fit, self.content_height(width))))

    def sizeHint(self) -> QSize:
        hint = super().sizeHint()
        return hint if not self._fit else QSize(hint.width(), self.minimumSizeHint().height())

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        # the panel's texts or visible parts changed, or the width did: the height it needs changed
        if self._fit and watched is self.widget() and event.type() in (QEvent.Type.LayoutRequest, QEvent.Type.Resize):
            self.updateGeometry()
            if event.type() == QEvent.Type.LayoutRequest and self.isVisible():
                extra = self.content_height(self.viewport().width()) - self.viewport().height()
                if extra > 0:
                    self.needs_height.emit(extra)
        return super().eventFilter(watched, event)


class ElidedLabel(QLabel):
    """A one-line label that shrinks down to `min_width` (its window never widens for a long text): what
    does not fit ends in "…". With `auto_tooltip`, the whole text is the tooltip while it is cut."""

    def __init__(self, text: str = "", min_width: int = 60, *, auto_tooltip: bool = True,
                 parent: QWidget | None = None) -> None:
        super().__init__(text, parent)
        self._min_width = min_width
        self._auto_tooltip = auto_tooltip

    def minimumSizeHint(self) -> QSize:
        hint = super().minimumSizeHint()
        return QSize(min(hint.width(), self._min_width), hint.height())

    def elided_text(self) -> str:
        return self.fontMetrics().elidedText(self.text(), Qt.TextElideMode.ElideRight, self.contentsRect().width())

    def setText(self, text: str) -> None:
        super().setText(text)
        self._update_tooltip()

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        self._update_tooltip()

    def _update_tooltip(self) -> None:
        if self._auto_tooltip:
            self.setToolTip(self.text() if self.elided_text() != self.text() else "")

    def paintEvent(self, _event: QPaintEvent) -> None:
        p = QPainter(self)
        p.setPen(self.palette().color(self.foregroundRole()))
        p.drawText(self.contentsRect(), int(self.alignment()), self.elided_text())
        p.end()
