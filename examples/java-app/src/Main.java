import java.io.IOException;
import java.io.InputStream;
import java.util.Properties;

import com.example.bundle.Bundle;
import com.example.greeting.Greeter;
import com.example.greeting.Names;
import com.example.greeting.format.Formatter;
import org.example.util.strings.Strings;

/**
 * The sample application of examples/java-app.
 *
 * Compiled into app/ with:
 *   javac --release 8 -cp 'lib/*' -d app src/Main.java
 * Run from examples/java-app with:
 *   java -cp 'app:lib/*' Main
 */
public class Main {
    public static void main(String[] args) throws IOException {
        Properties props = new Properties();
        try (InputStream in = Main.class.getResourceAsStream("/application.properties")) {
            if (in != null) {
                props.load(in);
            }
        }
        String name = props.getProperty("greeting.name", Names.defaultName());
        System.out.println(String.format(Formatter.pattern(), "Hello", name));
        System.out.println(Greeter.message());
        System.out.println(Strings.version());
        System.out.println(Bundle.describe());
        System.out.println("app.env=" + System.getenv().getOrDefault("APP_ENV", "unset"));
    }
}
