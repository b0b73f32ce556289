@echo off
rem Registers W+ Studio for "Open with" on .jpg/.jpeg/.png/.webp/.bmp for the current user (no admin):
rem double-click this file in the bundle's _internal\share folder; run it with /uninstall to remove it.
rem A photo opened this way is captured after the consent note; one of W+ Studio's PNGs restores its settings.
setlocal
set "EXE=%~dp0..\..\wplus-studio.exe"
for %%I in ("%EXE%") do set "EXE=%%~fI"
set "KEY=HKCU\Software\Classes"
if /I "%~1"=="/uninstall" goto uninstall
if not exist "%EXE%" (echo wplus-studio.exe not found at %EXE% & exit /b 1)
reg add "%KEY%\WPlusStudio.Image" /ve /d "Image for W+ Studio" /f >nul
reg add "%KEY%\WPlusStudio.Image\DefaultIcon" /ve /d "\"%EXE%\",0" /f >nul
reg add "%KEY%\WPlusStudio.Image\shell\open\command" /ve /d "\"%EXE%\" \"%%1\"" /f >nul
reg add "%KEY%\Applications\wplus-studio.exe\shell\open\command" /ve /d "\"%EXE%\" \"%%1\"" /f >nul
for %%E in (.jpg .jpeg .png .webp .bmp) do (
  reg add "%KEY%\%%E\OpenWithProgids" /v WPlusStudio.Image /t REG_NONE /f >nul
  reg add "%KEY%\Applications\wplus-studio.exe\SupportedTypes" /v %%E /t REG_SZ /d "" /f >nul
)
echo W+ Studio is now offered under "Open with" for photos.
exit /b 0
:uninstall
for %%E in (.jpg .jpeg .png .webp .bmp) do reg delete "%KEY%\%%E\OpenWithProgids" /v WPlusStudio.Image /f >nul 2>&1
reg delete "%KEY%\WPlusStudio.Image" /f >nul 2>&1
reg delete "%KEY%\Applications\wplus-studio.exe" /f >nul 2>&1
echo Removed.
